//! Tests against a real swtpm: `TssTpm` alone, and `TssTpm`, tpm2-tools and
//! raw sockets sharing swtpm through `TpmProxy`. Each test starts its own
//! swtpm. Without swtpm or tpm2-tools the tests skip with a message, unless
//! `IMALOG_REQUIRE_ORACLES=1`, as `scripts/test` sets it.
//!
//! Run with `cargo test -p imalog-tpm --features tss,swtpm-testing`.

mod common;
mod proxy;
mod quote;
mod tss;
mod verify;
