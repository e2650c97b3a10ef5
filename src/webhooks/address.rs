//! Which addresses a webhook delivery may connect to when `HERD_WEBHOOK_ALLOW_PRIVATE` is off.
//!
//! Owns the classification only: [`is_public`] for an IP address (v4, v6 and every IPv6 form that
//! carries an IPv4 address inside it) and [`is_localhost_name`] for the names that mean "this
//! machine" whatever DNS says. It does no I/O; `client` applies it to every address a delivery
//! connects to, after resolution.
//!
//! The rule is an allow-list in spirit: an address is public only if it is globally routable
//! unicast. IPv6 outside `2000::/3` is refused whole, so new special ranges down there need no
//! entry here; inside it, the special-purpose blocks of the IANA registry are listed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True iff `ip` is a globally routable unicast address: not loopback, private (RFC 1918),
/// shared (CGNAT `100.64.0.0/10`), link-local, unique-local, site-local, multicast, broadcast,
/// unspecified, "this network" (`0.0.0.0/8`), reserved, documentation or benchmarking, nor an
/// IPv6 address that embeds (IPv4-mapped, IPv4-compatible, SIIT, NAT64, 6to4) any of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// True iff `host` is `localhost` or a name under it (RFC 6761 reserves `*.localhost` for
/// loopback), in any letter case, with or without the root's trailing dot.
pub fn is_localhost_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0                                  // "this network", incl. 0.0.0.0
        || a == 10                                        // private
        || (a == 100 && (b & 0xc0) == 64)                 // shared address space (CGNAT)
        || a == 127                                       // loopback
        || (a == 169 && b == 254)                         // link-local (cloud metadata)
        || (a == 172 && (b & 0xf0) == 16)                 // private
        || (a == 192 && b == 0 && c == 0)                 // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                 // documentation (TEST-NET-1)
        || (a == 192 && b == 88 && c == 99)               // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168)                         // private
        || (a == 198 && (b & 0xfe) == 18)                 // benchmarking
        || (a == 198 && b == 51 && c == 100)              // documentation (TEST-NET-2)
        || (a == 203 && b == 0 && c == 113)               // documentation (TEST-NET-3)
        || a >= 224; // multicast, reserved (240/4) and broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Forms that carry an IPv4 address are judged by that address: the host (or a translator
    // on the path) would connect to it.
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // Only global unicast is public. This one rule refuses `::` and `::1`, the deprecated
    // IPv4-compatible `::a.b.c.d` (`::/96`), local-use NAT64 `64:ff9b:1::/48`, discard-only
    // `100::/64`, unique-local `fc00::/7`, site-local `fec0::/10`, link-local `fe80::/10` and
    // multicast `ff00::/8`.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // IETF protocol assignments 2001::/23 (Teredo, benchmarking, ORCHID …) and documentation
    // 2001:db8::/32 and 3fff::/20.
    let refused = (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || (s[0] & 0xfff0) == 0x3ff0;
    !refused
}

/// The IPv4 address inside an IPv6 address that a host or translator would reach instead:
/// IPv4-mapped `::ffff:a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, well-known NAT64 `64:ff9b::a.b.c.d`
/// and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap_or_else(|_| panic!("{text} is not an address")))
    }

    #[test]
    fn the_issues_targets_are_not_public() {
        // Every literal target the issue found accepted and delivered to.
        for text in ["::ffff:127.0.0.1", "::127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!public(text), "{text}");
        }
        for text in ["64:ff9b::7f00:1", "100.64.0.1", "0.0.0.1"] {
            assert!(!public(text), "{text}");
        }
    }

    #[test]
    fn ipv4_special_ranges_are_not_public() {
        for text in [
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!public(text), "{text}");
        }
    }

    #[test]
    fn ipv4_neighbours_of_the_special_ranges_are_public() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert!(public(text), "{text}");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_not_public() {
        for text in [
            "::",
            "::1",
            "::0.0.0.1",
            "::8.8.8.8", // IPv4-compatible: deprecated, refused whatever it carries
            "64:ff9b:1::a00:1",
            "64:ff9b:1::808:808",
            "100::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fec0::1",
            "feff::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
        ] {
            assert!(!public(text), "{text}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_that_address() {
        for text in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:0.0.0.0",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c0a8:101",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:0a00:0001::5",
        ] {
            assert!(!public(text), "{text}");
        }
        for text in ["::ffff:8.8.8.8", "::ffff:0:1.1.1.1", "64:ff9b::808:808", "2002:808:808::1"] {
            assert!(public(text), "{text}");
        }
    }

    #[test]
    fn global_ipv6_is_public() {
        for text in ["2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "2001:200::1", "2c0f:f248::1"] {
            assert!(public(text), "{text}");
        }
    }

    #[test]
    fn localhost_names_are_recognised() {
        for name in ["localhost", "localhost.", "LOCALHOST", "LocalHost.", "a.localhost", "x.y.localhost."] {
            assert!(is_localhost_name(name), "{name}");
        }
        for name in ["localhost.example.com", "notlocalhost", "example.com", "localhostx"] {
            assert!(!is_localhost_name(name), "{name}");
        }
    }
}
