//! Debug builds' test hooks: a test changes a running node's behaviour by
//! writing a file that an environment variable names (the clock's offset,
//! deafness to peers). Release builds have no hooks.

/// The contents of the file named by the environment variable `var`, if
/// it names one that exists (always `None` in release builds).
#[cfg(debug_assertions)]
pub(crate) fn read(var: &str) -> Option<String> {
    std::fs::read_to_string(std::env::var_os(var)?).ok()
}

#[cfg(not(debug_assertions))]
pub(crate) fn read(_var: &str) -> Option<String> {
    None
}
