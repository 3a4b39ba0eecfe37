//! Whether a process of this host is alive: how a killed holder of a run is recognised at
//! once.

/// This machine's host name (empty when unknown), to tell this host's processes apart.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// Whether process `pid` of this host exists (and is not this process). Where processes
/// cannot be checked (no `/proc`), assume it does.
pub(crate) fn process_exists(pid: u64) -> bool {
    if pid == u64::from(std::process::id()) {
        return false;
    }
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (killed, not yet reaped) is gone for our purposes.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}
