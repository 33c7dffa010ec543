//! Where connections come from: spreading source addresses over
//! 127.0.0.2..127.0.0.N when one address would run out of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Chooses the local address of connection number `index`.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    per_source: usize,
    loopback: bool,
}

impl Sources {
    /// `per_source` connections share one source address; the first block
    /// lets the kernel choose (127.0.0.1), the next blocks bind 127.0.0.2,
    /// 127.0.0.3, ... Only used when the broker is on IPv4 loopback.
    pub fn new(broker: SocketAddr, per_source: usize) -> Sources {
        Sources {
            per_source: per_source.max(1),
            loopback: matches!(broker.ip(), IpAddr::V4(ip) if ip.is_loopback()),
        }
    }

    /// The address to bind for connection `index`, if any.
    pub fn source(&self, index: usize) -> Option<IpAddr> {
        let block = index / self.per_source;
        if !self.loopback || block == 0 {
            return None;
        }
        // 127.0.0.2 .. 127.255.255.254
        let host = u32::try_from(block + 1).ok()?;
        if host >= 0x00ff_ffff {
            return None;
        }
        Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)))
    }

    /// How many distinct source addresses `count` connections use.
    pub fn addresses_used(&self, count: usize) -> usize {
        if !self.loopback {
            return 1;
        }
        count.div_ceil(self.per_source).max(1)
    }
}

/// The soft limit on open files of this process (from /proc/self/limits).
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_sources() {
        let broker: SocketAddr = "127.0.0.1:1883".parse().expect("addr");
        let sources = Sources::new(broker, 10);
        assert_eq!(sources.source(0), None);
        assert_eq!(sources.source(9), None);
        assert_eq!(sources.source(10), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(sources.source(25), Some("127.0.0.3".parse().expect("ip")));
        assert_eq!(
            sources.source(10 * 300),
            Some("127.0.1.45".parse().expect("ip"))
        );
        assert_eq!(sources.addresses_used(25), 3);
        let remote = Sources::new("10.0.0.1:1883".parse().expect("addr"), 10);
        assert_eq!(remote.source(100), None);
    }

    #[test]
    fn limit_is_read() {
        assert!(open_file_limit().is_some_and(|limit| limit > 0));
    }
}
