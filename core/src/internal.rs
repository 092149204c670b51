//! The protocol's building blocks, for the fuzz targets, the benches, the byte-level tests
//! and the protocol document's examples: hidden from the docs, not part of the supported
//! API, and free to change in any release.

#[path = "secure/cipher.rs"]
pub mod cipher;
#[path = "frame.rs"]
pub mod frame;
#[path = "secure/record.rs"]
pub mod record;
#[path = "request.rs"]
pub mod request;
#[path = "stable/wire.rs"]
pub mod wire;
