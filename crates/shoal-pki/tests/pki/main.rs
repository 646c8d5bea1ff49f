//! Integration tests for shoal-pki, driven only through the public API.

mod ca;
mod store;
mod tls;
mod token;
mod util;
