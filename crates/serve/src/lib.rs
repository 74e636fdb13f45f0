//! # roster-serve: one MCP server in front of many
//!
//! WIP
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
