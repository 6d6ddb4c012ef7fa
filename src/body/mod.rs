//! Request body types shared by the request path and the upstream client.
//!
//! A leaf: [`UpstreamBody`] is what goes to a provider (streamed, buffered,
//! or kept for a retry by [`replay`]), and both `proxy` (which builds it)
//! and `upstream` (which sends it) import it from here, so neither imports
//! the other.

pub(crate) mod replay;
mod upstream;

/// The error type of the bodies sidekey builds.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) use upstream::UpstreamBody;
