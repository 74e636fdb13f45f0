//! End-to-end tests: roster's crates against the real fixture server, in real
//! processes. Every test tags the processes it starts and checks that none is
//! left when it ends.

mod common;
mod remote;
mod stdio;
