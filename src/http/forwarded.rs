//! The client address behind trusted proxies: `[server] trusted_proxies` (CIDRs) and
//! `X-Forwarded-For`.
//!
//! The header is believed only when the TCP peer is inside a trusted CIDR (the caller checks
//! that first, with [`trusted`]). Then its addresses are walked right to left (all
//! `X-Forwarded-For` lines, in order, form one comma-separated list): each trusted hop is
//! skipped, and the first address that is not trusted is the client. Only what is walked must
//! parse: whatever an untrusted client put further left is never read. An element that does not
//! parse as an IP address (`1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`), an
//! empty element, or more than [`MAX_HOPS`] trusted hops make the header malformed: it is then
//! ignored and the peer stands. Every hop trusted: the leftmost address is the client.
//!
//! Sans-io and allocation-free: the data plane calls [`resolve`] per call behind a trusted peer.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Trusted hops walked before the header is called malformed.
pub const MAX_HOPS: usize = 32;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare `ADDR`. Host bits set below the prefix are an error (the
    /// message names the block that was probably meant).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = a.trim().parse().map_err(|_| {
            format!(
                "{s:?} is not an address block: write `10.0.0.0/8`, `2001:db8::/32` or an address"
            )
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?}: the prefix length must be a number from 0 to {max}"
                    ));
                }
            },
        };
        let c = Cidr { net, prefix };
        let masked = c.mask(net);
        if masked != net {
            return Err(format!(
                "{s:?} has host bits set below /{prefix}: write \"{masked}/{prefix}\""
            ));
        }
        Ok(c)
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v) => {
                let bits = u32::from(v);
                let m = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4((bits & m).into())
            }
            IpAddr::V6(v) => {
                let bits = u128::from(v);
                let m = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6((bits & m).into())
            }
        }
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.mask(ip) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` is inside one of `list`.
pub fn trusted(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// Why a header from a trusted peer was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An element that must be read is not an IP address (or is empty).
    NotAnAddress,
    /// More than [`MAX_HOPS`] trusted hops.
    TooManyHops,
}

/// One element: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`
/// (optional whitespace around it).
fn parse_element(e: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(e).ok()?.trim_matches([' ', '\t']);
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|v| IpAddr::V6(v).to_canonical())
}

/// The client named by `X-Forwarded-For` (`lines`: the values of every such field, in the
/// order received), walking right to left past `trusted` hops. `Ok(None)`: no header.
pub fn resolve<'a, I>(lines: I, trusted_list: &[Cidr]) -> Result<Option<IpAddr>, Malformed>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let mut hops = 0usize;
    let mut leftmost = None;
    for line in lines.rev() {
        for e in line.rsplit(|&b| b == b',') {
            let ip = parse_element(e).ok_or(Malformed::NotAnAddress)?;
            if !trusted(trusted_list, ip) {
                return Ok(Some(ip));
            }
            hops += 1;
            if hops > MAX_HOPS {
                return Err(Malformed::TooManyHops);
            }
            leftmost = Some(ip);
        }
    }
    Ok(leftmost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for (bad, want) in [
            ("10.0.0.1/8", "write \"10.0.0.0/8\""),
            ("10.0.0.0/33", "from 0 to 32"),
            ("2001:db8::/129", "from 0 to 128"),
            ("nope", "not an address block"),
            ("10.0.0.0/x", "prefix length"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn resolve_table() {
        let t = cidrs(&["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let r = |lines: &[&str]| resolve(lines.iter().map(|l| l.as_bytes()), &t);
        assert_eq!(r(&[]), Ok(None));
        assert_eq!(r(&["203.0.113.9"]), Ok(ip("203.0.113.9")));
        assert_eq!(r(&["203.0.113.9, 10.0.0.2"]), Ok(ip("203.0.113.9")));
        // the rightmost untrusted wins: a client cannot push a forged address past it
        assert_eq!(
            r(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]),
            Ok(ip("203.0.113.9"))
        );
        // garbage left of the client is never read
        assert_eq!(r(&["garbage, 203.0.113.9"]), Ok(ip("203.0.113.9")));
        // several lines form one list, in order
        assert_eq!(r(&["198.51.100.1", "10.0.0.3"]), Ok(ip("198.51.100.1")));
        assert_eq!(r(&["10.0.0.4", "198.51.100.2"]), Ok(ip("198.51.100.2")));
        // ports and brackets
        assert_eq!(r(&["203.0.113.9:4711"]), Ok(ip("203.0.113.9")));
        assert_eq!(r(&["[2001:db8::7]:443"]), Ok(ip("2001:db8::7")));
        assert_eq!(r(&["[2001:db8::7]"]), Ok(ip("2001:db8::7")));
        assert_eq!(r(&["2001:db8::7, fd00::1"]), Ok(ip("2001:db8::7")));
        assert_eq!(r(&["::ffff:203.0.113.9"]), Ok(ip("203.0.113.9")));
        // every hop trusted: the leftmost
        assert_eq!(r(&["10.0.0.9, 10.0.0.2"]), Ok(ip("10.0.0.9")));
        // malformed where it must be read
        assert_eq!(r(&["203.0.113.9, garbage"]), Err(Malformed::NotAnAddress));
        assert_eq!(r(&["203.0.113.9,"]), Err(Malformed::NotAnAddress));
        assert_eq!(r(&[""]), Err(Malformed::NotAnAddress));
        assert_eq!(r(&["unknown"]), Err(Malformed::NotAnAddress));
        assert_eq!(r(&["1.2.3.4.5"]), Err(Malformed::NotAnAddress));
        let long = vec!["10.0.0.1"; MAX_HOPS + 1].join(",");
        assert_eq!(r(&[&long]), Err(Malformed::TooManyHops));
        let ok = vec!["10.0.0.1"; MAX_HOPS].join(",");
        assert_eq!(r(&[&ok]), Ok(ip("10.0.0.1")));
        let huge = format!("{}1.2.3.4", "9".repeat(5000));
        assert_eq!(r(&[&huge]), Err(Malformed::NotAnAddress));
    }
}
