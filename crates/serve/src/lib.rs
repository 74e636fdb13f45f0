//! # roster-serve: one MCP server in front of many
//!
//! A [`Gateway`] is rmcp's [`ServerHandler`](rmcp::ServerHandler) over a
//! [`roster_supervisor::Supervisor`]: every tool, prompt, resource and template
//! of every server that is up, under the server's prefix, with calls routed
//! through a table (never by splitting a name) and bounded by the server's
//! `tool_timeout`. Serve it over any rmcp transport; run [`Gateway::run`]
//! beside it to keep the [`catalog`] in step as servers come and go, and to tell
//! clients (`list_changed`, debounced) what changed.
//!
//! The [`Hub`] is the other direction: it is the relay every transport is built
//! with, and routes what upstream servers send back (progress, sampling,
//! elicitation and roots requests, log messages) to the client they belong to.
//!
//! [`names`] forms the exposed names, [`cache`] keeps on-demand servers'
//! listings between runs.
#![forbid(unsafe_code)]

pub mod cache;
pub mod catalog;
mod hub;
pub mod names;
pub use hub::Hub;
mod gateway;
pub use gateway::{
    CallObserver, CallOutcome, DEFAULT_TOOL_TIMEOUT, Gateway, GatewayOptions, LOGIN_TOOL, Logins, STATUS_TOOL,
    STATUS_URI, ServerSettings, describe, login_command,
};
