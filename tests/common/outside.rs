//! "The outside" of the network tests, inside the with-kvm VM (L1): a network namespace `ext`
//! behind a veth `up0` (UPLINK, L1's default route) to ext's `eth0` (EXT and any extra
//! addresses, and METADATA playing the cloud metadata service). Nothing leaves L1.

pub const EXT: &str = "198.51.100.1";
pub const UPLINK: &str = "198.51.100.254";
pub const METADATA: &str = "169.254.169.254";

/// Shell lines that make `ext` with EXT, `extra` addresses and METADATA on its `eth0`, and
/// route L1 to it (the caller starts its own servers there).
pub fn ext_namespace_script(extra: &[&str]) -> String {
    let extra: String = extra
        .iter()
        .map(|a| format!("ip -n ext addr add {a}/24 dev eth0\n"))
        .collect();
    format!(
        "ip link set lo up
        ip netns add ext
        ip link add up0 type veth peer name eth0 netns ext
        ip addr add {UPLINK}/24 dev up0
        ip link set up0 up
        ip route add default via {EXT}
        ip route add {METADATA}/32 via {EXT}
        ip -n ext link set lo up
        ip -n ext addr add {EXT}/24 dev eth0
        {extra}ip -n ext addr add {METADATA}/32 dev eth0
        ip -n ext link set eth0 up
        ip -n ext route add default via {UPLINK}
        "
    )
}
