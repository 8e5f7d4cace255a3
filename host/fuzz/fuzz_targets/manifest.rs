//! Any text given as a manifest either parses or is refused with an error; it never panics,
//! and a manifest that parses can be described and asked about its grants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agent_host::fuzzing::check_manifest(data));
