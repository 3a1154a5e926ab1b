//! The credentials of the process behind a FUSE request: its thread id comes
//! with the request, its effective capabilities from `/proc`.

/// Bit of CAP_SYS_ADMIN in a capability mask (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// Whether thread `tid` has CAP_SYS_ADMIN in its effective set, read from
/// `/proc/<tid>/status`. When the status cannot be read (the thread is gone,
/// or lives in another PID namespace), `uid == 0` decides, as it would
/// without capabilities.
pub fn has_cap_sys_admin(tid: u32, uid: u32) -> bool {
    match effective_capabilities(tid) {
        Some(mask) => mask & (1 << CAP_SYS_ADMIN) != 0,
        None => uid == 0,
    }
}

fn effective_capabilities(tid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_cap_eff(&status)
}

/// Parses the `CapEff:` line of a `/proc/<pid>/status` file.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parses_hex_mask() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let tid = std::process::id();
        assert!(effective_capabilities(tid).is_some());
    }
}
