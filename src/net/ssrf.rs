//! The SSRF guard for destinations an agent chooses (blind tunnels, wildcard tunnel entries):
//! which addresses an agent may not reach through the gateway unless the operator said
//! `allow_private = true`. Sans-io: a pure classifier over `IpAddr`, table-tested. The caller
//! resolves a name once, checks every address, and connects to a checked address (no second
//! resolution, so no DNS-rebinding gap).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused (static text for the log line and the test table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Unspecified,
    Loopback,
    LinkLocal,
    /// RFC 1918 (IPv4) or unique local fc00::/7 (IPv6).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    Cgnat,
    Multicast,
    /// A cloud instance-metadata endpoint (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...).
    Metadata,
    /// Broadcast, documentation, benchmarking, 0/8, 240/4 and other addresses that are never a
    /// public origin.
    Reserved,
}

impl Blocked {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::Unspecified => "unspecified",
            Blocked::Loopback => "loopback",
            Blocked::LinkLocal => "link-local",
            Blocked::Private => "private",
            Blocked::Cgnat => "cgnat",
            Blocked::Multicast => "multicast",
            Blocked::Metadata => "metadata",
            Blocked::Reserved => "reserved",
        }
    }
}

/// Whether `ip` is a cloud metadata address (checked first: it is refused even where its
/// range would be allowed, and `check` warns on a proxy upstream that names one).
pub fn is_metadata(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
            [169, 254, 169, 254]
            // Alibaba Cloud
            | [100, 100, 100, 200]
            // AWS ECS task metadata, EKS pod identity
            | [169, 254, 170, 2] | [169, 254, 170, 23]
            // Oracle Cloud (also 169.254.169.254)
            | [192, 0, 0, 192]
        ),
        IpAddr::V6(v6) => {
            // AWS IMDS over IPv6 (fd00:ec2::254) and the EKS pod identity agent (fd00:ec2::23)
            let s = v6.segments();
            s[..7] == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0] && matches!(s[7], 0x254 | 0x23)
        }
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `None`: a public address an agent may reach. `Some(why)`: refused unless `allow_private`.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    if is_metadata(ip) {
        return Some(Blocked::Metadata);
    }
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let o = ip.octets();
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if ip.is_link_local() {
        return Some(Blocked::LinkLocal);
    }
    if ip.is_private() {
        return Some(Blocked::Private);
    }
    if o[0] == 100 && (64..128).contains(&o[1]) {
        return Some(Blocked::Cgnat);
    }
    if ip.is_multicast() {
        return Some(Blocked::Multicast);
    }
    let reserved = o[0] == 0                                     // "this network"
        || ip.is_broadcast()
        || o[0] >= 240                                           // 240/4
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)               // 192.0.0/24 (IETF)
        || (o[0] == 192 && o[1] == 0 && o[2] == 2)               // TEST-NET-1
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)            // TEST-NET-2
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)             // TEST-NET-3
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)); // benchmarking
    reserved.then_some(Blocked::Reserved)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return Some(Blocked::LinkLocal);
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some(Blocked::Private);
    }
    if ip.is_multicast() {
        return Some(Blocked::Multicast);
    }
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96) carry an IPv4 address:
    // judged as that address
    if (s[..6] == [0; 6]) || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return classify(IpAddr::V4(v4));
    }
    let reserved = (s[0] & 0xfec0) == 0xfec0   // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8)    // documentation
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0] // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x200 && s[1] != 0x0001 && s[1] != 0x0004); // IETF protocol assignments, Teredo
    reserved.then_some(Blocked::Reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_table() {
        let rows: &[(&str, Option<Blocked>)] = &[
            // public
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("140.82.112.3", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
            // edges around private ranges
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Blocked::Private)),
            ("10.255.255.255", Some(Blocked::Private)),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Blocked::Private)),
            ("172.31.255.255", Some(Blocked::Private)),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some(Blocked::Private)),
            ("192.168.255.255", Some(Blocked::Private)),
            ("192.169.0.0", None),
            // loopback, unspecified
            ("127.0.0.1", Some(Blocked::Loopback)),
            ("127.255.255.254", Some(Blocked::Loopback)),
            ("0.0.0.0", Some(Blocked::Unspecified)),
            ("0.1.2.3", Some(Blocked::Reserved)),
            ("::1", Some(Blocked::Loopback)),
            ("::", Some(Blocked::Unspecified)),
            // link-local and metadata
            ("169.254.0.1", Some(Blocked::LinkLocal)),
            ("169.254.255.255", Some(Blocked::LinkLocal)),
            ("169.253.255.255", None),
            ("169.254.169.254", Some(Blocked::Metadata)),
            ("169.254.170.2", Some(Blocked::Metadata)),
            ("100.100.100.200", Some(Blocked::Metadata)),
            ("fd00:ec2::254", Some(Blocked::Metadata)),
            ("fd00:ec2::23", Some(Blocked::Metadata)),
            ("fd00:ec2::255", Some(Blocked::Private)),
            ("fe80::1", Some(Blocked::LinkLocal)),
            ("febf:ffff::1", Some(Blocked::LinkLocal)),
            ("fec0::1", Some(Blocked::Reserved)),
            // CGNAT
            ("100.63.255.255", None),
            ("100.64.0.0", Some(Blocked::Cgnat)),
            ("100.127.255.255", Some(Blocked::Cgnat)),
            ("100.128.0.0", None),
            // ULA
            ("fc00::1", Some(Blocked::Private)),
            ("fdff:ffff::1", Some(Blocked::Private)),
            ("fbff::1", None),
            // multicast, broadcast, reserved
            ("224.0.0.1", Some(Blocked::Multicast)),
            ("239.255.255.255", Some(Blocked::Multicast)),
            ("ff02::1", Some(Blocked::Multicast)),
            ("255.255.255.255", Some(Blocked::Reserved)),
            ("240.0.0.1", Some(Blocked::Reserved)),
            ("192.0.2.1", Some(Blocked::Reserved)),
            ("198.51.100.1", Some(Blocked::Reserved)),
            ("203.0.113.1", Some(Blocked::Reserved)),
            ("198.18.0.1", Some(Blocked::Reserved)),
            ("2001:db8::1", Some(Blocked::Reserved)),
            // IPv4 inside IPv6: judged as the IPv4 address
            ("::ffff:127.0.0.1", Some(Blocked::Loopback)),
            ("::ffff:10.1.2.3", Some(Blocked::Private)),
            ("::ffff:169.254.169.254", Some(Blocked::Metadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Blocked::Loopback)),
            ("64:ff9b::10.0.0.1", Some(Blocked::Private)),
            ("64:ff9b::808:808", None),
        ];
        for (addr, want) in rows {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(classify(ip), *want, "{addr}");
        }
    }

    #[test]
    fn metadata_is_metadata_whatever_the_form() {
        for a in ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"] {
            assert!(is_metadata(a.parse().unwrap()), "{a}");
        }
        assert!(!is_metadata("169.254.169.253".parse().unwrap()));
    }
}
