//! The box's own addresses: functions must not reach the box itself (or
//! what runs beside it) through a wildcard destination rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Every address of every local interface, plus the addresses the box
/// listens on: a box listening on loopback still must not let functions
/// reach services bound to the host's public address.
pub(crate) fn own_addresses(listening: &[SocketAddr]) -> Vec<IpAddr> {
    let mut own: Vec<IpAddr> = interface_addresses();
    own.extend(
        listening
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified()),
    );
    own.sort();
    own.dedup();
    own
}

/// Every address configured on a local interface (getifaddrs).
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once;
    // every pointer is checked for null and each sockaddr is read as the
    // type its family field names.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_box_owns_every_interface_address_whatever_it_listens_on() {
        let own = own_addresses(&["127.0.0.1:7878".parse().unwrap()]);
        assert_eq!(own, own_addresses(&["0.0.0.0:7878".parse().unwrap()]));
        assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
        assert!(!own.iter().any(IpAddr::is_unspecified), "{own:?}");
    }

    #[test]
    fn a_listen_address_not_on_an_interface_is_owned_too() {
        let own = own_addresses(&["192.0.2.7:7878".parse().unwrap()]);
        assert!(own.contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
    }
}
