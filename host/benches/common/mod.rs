//! What every benchmark shares: the JSON line per metric, percentiles, and building the
//! real plugins the benchmarks load.
#![allow(dead_code)]

use std::path::PathBuf;

/// The allocator the `host` binary uses (see `src/main.rs`), so benchmarks measure it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::Command;

/// Prints one metric as a JSON line (`{"metric":…,"value":…,"unit":…}`).
pub fn emit(metric: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({ "metric": metric, "value": (value * 1000.0).round() / 1000.0, "unit": unit })
    );
}

/// The `p` quantile (0.0–1.0) of `values` (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[((values.len() - 1) as f64 * p).round() as usize]
}

pub fn median(mut values: Vec<f64>) -> f64 {
    percentile(&mut values, 0.5)
}

/// Builds every plugin for wasm32-wasip2 and returns the folder of the `.wasm` files.
pub fn build_plugins() -> PathBuf {
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&plugins)
        .status()
        .expect("cargo build plugins");
    assert!(status.success(), "building plugins failed");
    plugins.join("target/wasm32-wasip2/release")
}

/// The echo component a benchmark loads: `BENCH_ECHO_WASM` when set (to compare two builds of
/// it in one sitting, e.g. another opt-level or SDK), else the one built from `plugins/echo`.
pub fn echo_wasm() -> PathBuf {
    match std::env::var_os("BENCH_ECHO_WASM") {
        Some(path) => PathBuf::from(path),
        None => build_plugins().join("echo.wasm"),
    }
}

/// A number from environment variable `name` (a benchmark's knob), or `default` when it is
/// unset or not a number.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
