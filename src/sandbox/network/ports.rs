//! docker's `-p/--publish`: `[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`, port ranges
//! (`8000-8001:80-81`), IPv6 host addresses in brackets (`[::1]:8080:80`) and the long form
//! (`published=8080,target=80,protocol=udp`), parsed as docker's `nat.ParsePortSpec` does
//! and refused with its messages; and the published ports shown as `docker ps` (its PORTS
//! column) and `docker port` show them.
//!
//! A host port left out is one the kernel picks when the proxy binds; a host port range for
//! one container port (`8000-8010:80`) takes the first free port of the range, as docker
//! does. An address left out is `0.0.0.0`. The guest side is always the sandbox's IPv4
//! address.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The transport of a published port. docker's third, sctp, is refused when parsed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port as `-p` asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on: `0.0.0.0` when `-p` names none.
    pub host_ip: IpAddr,
    /// The host port; 0: one the kernel picks at bind time (docker's `-p 80`).
    pub host_port: u16,
    /// Set for docker's `-p 8000-8010:80`: `host_port..=host_port_end` is a range to take
    /// the first free port of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    /// The port in the guest the proxy connects (TCP) or sends (UDP) to.
    pub guest_port: u16,
    pub proto: Proto,
}

/// A published port once bound: `host_port` is the port listened on, never 0. Recorded in
/// the sandbox's state for `ps` and `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoundPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl BoundPort {
    /// The address listened on.
    #[cfg(test)]
    pub fn host_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.host_ip, self.host_port)
    }
}

/// A `-p` value or a `port` query refused. The message is docker's where docker has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// `-p` as given, and docker's reason for refusing it.
    #[error("invalid -p \"{spec}\": {reason}")]
    Publish { spec: String, reason: PublishError },
    /// `port SANDBOX PORT` with a PORT that is no port number.
    #[error("invalid port ({0})")]
    Query(String),
    /// `port SANDBOX PORT` with a PORT that is not published.
    #[error("No public port '{port}' published for {sandbox}")]
    NotPublished { port: String, sandbox: String },
}

/// Why a `-p` value is refused: docker's go-connections `nat.ParsePortSpec` texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No container port.
    #[error("no port specified: {0}<empty>")]
    NoPort(String),
    /// A transport other than tcp, udp and sctp.
    #[error("invalid proto: {0}")]
    Proto(String),
    /// sctp, which docker accepts and brig's proxy cannot forward.
    #[error("sctp is not supported: brig publishes tcp and udp ports only")]
    Sctp,
    /// The host address is not an IP address.
    #[error("invalid IP address: {0}")]
    Ip(String),
    /// The container port (range) is no port number (range) in 1..=65535.
    #[error("invalid containerPort: {0}")]
    ContainerPort(String),
    /// The host port (range) is no port number (range).
    #[error("invalid hostPort: {0}")]
    HostPort(String),
    /// A container port range with a host port (range) of another length.
    #[error("invalid ranges specified for container and host Ports: {container} and {host}")]
    Ranges { container: String, host: String },
    /// The long form with a parameter that is not `name=value`.
    #[error("invalid publish opts format (should be name=value but got '{0}')")]
    LongSyntax(String),
}

/// Parses one `-p/--publish` value into one mapping per container port it names.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, PortError> {
    let refuse = |reason| PortError::Publish {
        spec: spec.to_owned(),
        reason,
    };
    if spec.contains('=') {
        let standard = long_form(spec).map_err(refuse)?;
        parse_standard(&standard).map_err(refuse)
    } else {
        parse_standard(spec).map_err(refuse)
    }
}

/// docker-cli's `convertToStandardNotation`: `published=H,target=C,protocol=P` is `H:C/P`;
/// other names (`mode`) are ignored.
fn long_form(spec: &str) -> Result<String, PublishError> {
    let (mut published, mut target, mut protocol) = ("", "", "tcp");
    for param in spec.split(',') {
        match param.split_once('=') {
            Some(("published", v)) => published = v,
            Some(("target", v)) => target = v,
            Some(("protocol", v)) => protocol = v,
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(PublishError::LongSyntax(param.to_owned())),
        }
    }
    Ok(format!("{published}:{target}/{protocol}"))
}

/// `[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`: the last two `:`-fields are the ports, whatever
/// comes before them the address (so an IPv6 address works even without brackets).
fn parse_standard(raw: &str) -> Result<Vec<PortMapping>, PublishError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (container, proto) = container.split_once('/').unwrap_or((container, ""));
    if container.is_empty() {
        return Err(PublishError::NoPort(raw.to_owned()));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" | "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "sctp" => return Err(PublishError::Sctp),
        other => return Err(PublishError::Proto(other.to_owned())),
    };
    let host_ip = parse_ip(&ip)?;
    let (first, last) = match port_range(container) {
        Some((0, _)) | None => return Err(PublishError::ContainerPort(container.to_owned())),
        Some(range) => range,
    };
    let host_range = if host.is_empty() {
        None
    } else {
        let (h_first, h_last) =
            port_range(host).ok_or_else(|| PublishError::HostPort(host.to_owned()))?;
        // A host range for a single container port is a range to pick from.
        if last != first && h_last - h_first != last - first {
            return Err(PublishError::Ranges {
                container: container.to_owned(),
                host: host.to_owned(),
            });
        }
        Some((h_first, h_last))
    };
    Ok((first..=last)
        .enumerate()
        .map(|(i, guest_port)| {
            let (host_port, host_port_end) = match host_range {
                None => (0, None),
                Some((h_first, h_last)) if first == last && h_first != h_last => {
                    (h_first, Some(h_last))
                }
                // Equal lengths: i < 65536 and h_first + i <= h_last.
                #[allow(clippy::cast_possible_truncation)]
                Some((h_first, _)) => (h_first + i as u16, None),
            };
            PortMapping {
                host_ip,
                host_port,
                host_port_end,
                guest_port,
                proto,
            }
        })
        .collect())
}

/// The host address: none is `0.0.0.0`; brackets around an address are dropped.
fn parse_ip(ip: &str) -> Result<IpAddr, PublishError> {
    if ip.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    let bad = || PublishError::Ip(ip.to_owned());
    let bare = match ip.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or_else(bad)?,
        None => ip,
    };
    bare.parse().map_err(|_| PublishError::Ip(bare.to_owned()))
}

/// `N` or `N-M` with `N <= M`, decimal digits only, each at most 65535.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port_number(a)?, port_number(b)?),
        None => {
            let p = port_number(s)?;
            (p, p)
        }
    };
    (first <= last).then_some((first, last))
}

fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `ip:port`, or `[ip]:port` for IPv6 (Go's `net.JoinHostPort`).
fn join_host_port(ip: IpAddr, port: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// docker ps's PORTS column: `0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp`. As docker-cli's
/// `DisplayablePorts`: sorted by container port, address, host port and proto; ports
/// published on the same number grouped into ranges (`0.0.0.0:8000-8001->8000-8001/tcp`)
/// and listed first, the others after them.
pub fn format_ports(ports: &[BoundPort]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_by_key(|p| (p.guest_port, p.host_ip, p.host_port, p.proto));
    // (address, proto) -> the open group (first, last), in the order the keys appeared.
    let mut groups: Vec<((IpAddr, Proto), (u16, u16))> = Vec::new();
    let mut result = Vec::new();
    let mut others = Vec::new();
    for p in &sorted {
        let current = p.guest_port;
        if p.host_port != current {
            let host = join_host_port(p.host_ip, &p.host_port.to_string());
            others.push(format!("{host}->{current}/{}", p.proto));
            continue;
        }
        let key = (p.host_ip, p.proto);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            None => groups.push((key, (current, current))),
            Some((_, group)) if group.1.checked_add(1) == Some(current) => group.1 = current,
            Some((_, group)) if group.1 == current => {}
            Some((_, group)) => {
                result.push(form_group(key, *group));
                *group = (current, current);
            }
        }
    }
    result.extend(
        groups
            .into_iter()
            .map(|(key, group)| form_group(key, group)),
    );
    result.extend(others);
    result.join(", ")
}

fn form_group((ip, proto): (IpAddr, Proto), (first, last): (u16, u16)) -> String {
    let ports = if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    };
    format!("{}->{ports}/{proto}", join_host_port(ip, &ports))
}

/// docker port's lines, `80/tcp -> 0.0.0.0:8080`, in its (natural) order.
pub fn port_lines(ports: &[BoundPort]) -> Vec<String> {
    let mut lines: Vec<String> = ports
        .iter()
        .map(|p| {
            let host = join_host_port(p.host_ip, &p.host_port.to_string());
            format!("{}/{} -> {host}", p.guest_port, p.proto)
        })
        .collect();
    lines.sort_by(|a, b| natural_cmp(a, b));
    lines
}

/// docker port's lines for one container port, `PORT[/PROTO]` (tcp when left out): the host
/// addresses it is published on, `0.0.0.0:8080`.
pub fn lookup_port(
    ports: &[BoundPort],
    query: &str,
    sandbox: &str,
) -> Result<Vec<String>, PortError> {
    let (port, proto) = query.split_once('/').unwrap_or((query, "tcp"));
    let port = port_number(port).ok_or_else(|| PortError::Query(port.to_owned()))?;
    let mut lines: Vec<String> = ports
        .iter()
        .filter(|p| p.guest_port == port && p.proto.to_string() == proto)
        .map(|p| join_host_port(p.host_ip, &p.host_port.to_string()))
        .collect();
    if lines.is_empty() {
        return Err(PortError::NotPublished {
            port: query.to_owned(),
            sandbox: sandbox.to_owned(),
        });
    }
    lines.sort_by(|a, b| natural_cmp(a, b));
    Ok(lines)
}

/// Natural order (`fvbommel/sortorder`, which docker port sorts with): runs of digits compare
/// as numbers and sort before other bytes; other bytes compare as bytes.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (da, db) = (a[i].is_ascii_digit(), b[j].is_ascii_digit());
        if da != db {
            return if da {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        if !da {
            match a[i].cmp(&b[j]) {
                Ordering::Equal => (i, j) = (i + 1, j + 1),
                other => return other,
            }
            continue;
        }
        let skip_zeros = |s: &[u8], mut k: usize| {
            while k < s.len() && s[k] == b'0' {
                k += 1;
            }
            k
        };
        let digits_end = |s: &[u8], mut k: usize| {
            while k < s.len() && s[k].is_ascii_digit() {
                k += 1;
            }
            k
        };
        let (nz_a, nz_b) = (skip_zeros(a, i), skip_zeros(b, j));
        let (end_a, end_b) = (digits_end(a, nz_a), digits_end(b, nz_b));
        let by_number = (end_a - nz_a)
            .cmp(&(end_b - nz_b))
            .then_with(|| a[nz_a..end_a].cmp(&b[nz_b..end_b]))
            // Fewer leading zeros first.
            .then_with(|| (nz_a - i).cmp(&(nz_b - j)));
        if by_number != Ordering::Equal {
            return by_number;
        }
        (i, j) = (end_a, end_b);
    }
    (a.len() - i).cmp(&(b.len() - j))
}

#[cfg(test)]
pub(super) mod tests;
