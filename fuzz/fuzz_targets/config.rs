#![no_main]
//! Any text given as a config file gets a `Config` or a `ConfigError`, never a panic;
//! and an error message never comes out empty.

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// The only call into cutover: `Ok(())` for a valid config, else the error's message.
fn check(text: &str) -> Result<(), String> {
    cutover::config::Config::parse(text, Path::new("fuzz.toml"))
        .map(drop)
        .map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(message) = check(text) {
        assert!(
            message.contains("fuzz.toml"),
            "error does not name the file: {message}"
        );
    }
});
