//! A field of `/proc/<pid>/status` (memory use), shared by the tests and the
//! benchmarks.

/// `field` (e.g. `"VmRSS:"`, `"VmHWM:"`) of the process `pid` (`None`: this
/// one), in KiB; 0 when it cannot be read.
pub fn status_kib(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
