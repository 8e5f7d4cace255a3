//! Subject matching three ways must agree: `subjects::matches`, the bus's subscription index
//! (`bus::Routes`, what the embedded bus delivers by) and a reference written from the NATS
//! rules (`*` exactly one token, a final `>` one or more). Input: lines; all but the last are
//! patterns, the last is the subject published to.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agent_host::fuzzing::check_subjects(data));
