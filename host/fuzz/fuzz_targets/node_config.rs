//! Any text given as a node config either parses or is refused with an error naming the
//! problem; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agent_host::fuzzing::check_node_config(data));
