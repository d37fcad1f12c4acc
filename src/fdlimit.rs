//! The process's open-file limit (`RLIMIT_NOFILE`): raised at start, and read to size the client
//! connection limit.
//!
//! Every connection, WAL segment, backend file and log file is a descriptor. Many systems start a
//! process with a soft limit of 1024 or even 256 and a hard limit far above it; a server left at the
//! soft limit runs out under a few hundred idle clients and then can accept nothing at all. Go raises
//! the soft limit to the hard one when a program starts (and so does etcd); [`raise_to_hard`] does
//! the same. The hard limit itself is the administrator's and is never touched.
//!
//! Left out: platforms without `getrlimit` (the functions report the limit as unknown there).

/// Descriptors the server keeps for everything but client connections (WAL segments and the
/// next one, the backend, snapshots, peer connections, logs, the runtime's own), when the limit
/// is large enough; see [`default_max_connections`].
pub const RESERVE: u64 = 256;

/// The soft and hard limits, if the platform reports them.
// `rlim_t` is u64 on 64-bit Linux but not everywhere: the casts are needed elsewhere.
#[allow(clippy::unnecessary_cast)]
pub fn limits() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        Some((lim.rlim_cur as u64, lim.rlim_max as u64))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-file limit to the hard limit. Returns the soft limit before and after, or
/// the error that refused it.
#[allow(clippy::unnecessary_cast)]
pub fn raise_to_hard() -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let before = lim.rlim_cur as u64;
            if lim.rlim_cur >= lim.rlim_max {
                return Ok((before, before));
            }
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok((before, lim.rlim_cur as u64))
        }
    }
    #[cfg(not(unix))]
    {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no RLIMIT_NOFILE on this platform",
        ))
    }
}

/// `--max-client-connections 0`: the soft open-file limit less [`RESERVE`], or half the limit when
/// it is below twice the reserve. Unknown or unlimited: 65 536 less the reserve.
pub fn default_max_connections(soft_limit: Option<u64>) -> usize {
    let limit = soft_limit
        .filter(|&l| l < u64::MAX) // RLIM_INFINITY
        .unwrap_or(65_536);
    let reserve = RESERVE.min(limit / 2);
    usize::try_from(limit - reserve)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_a_reserve_below_the_limit() {
        assert_eq!(default_max_connections(Some(20_000)), 20_000 - 256);
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(256)), 128);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(None), 65_536 - 256);
    }
}
