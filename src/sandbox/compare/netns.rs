//! The baseline container's network, as docker's default bridge gives one: a network
//! namespace with a veth to the host (the host's end is the container's gateway), a default
//! route through it and masquerade of its traffic, no egress policy. Made as root only (a
//! rootless runtime gets a namespace with only `lo`); removed on drop.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The host's end of the link and the container's (a /30 outside brig's pool, 10.89/16).
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 254, 1);
pub const CONTAINER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 199, 254, 2);

/// A network namespace with a NATed veth.
pub struct Netns {
    pub name: String,
    /// The OCI spec's path to join it.
    pub path: String,
    /// What the table shows of it.
    pub describe: String,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates it (root only); the error says why not.
    pub fn create() -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("rootless".into());
        }
        let name = format!("brigcmp{}", std::process::id());
        let veth = format!("bcmp{}", std::process::id());
        let ns = Self {
            path: format!("/var/run/netns/{name}"),
            describe: "veth+NAT, no policy".into(),
            name,
        };
        let (n, h) = (ns.name.as_str(), veth.as_str());
        let host = format!("{HOST_ADDR}/30");
        let cont = format!("{CONTAINER_ADDR}/30");
        let gw = HOST_ADDR.to_string();
        sh(&["ip", "netns", "add", n])?;
        // From here the namespace (and with it the veth) goes on drop.
        sh(&[
            "ip", "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])?;
        sh(&["ip", "addr", "add", &host, "dev", h])?;
        sh(&["ip", "link", "set", h, "up"])?;
        sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", n, "addr", "add", &cont, "dev", "eth0"])?;
        sh(&["ip", "-n", n, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", n, "route", "add", "default", "via", &gw])?;
        crate::sandbox::network::host::enable_forwarding().map_err(|e| e.to_string())?;
        let rules = format!(
            "add table ip {n}\n\
             add chain ip {n} post {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip {n} post ip saddr {CONTAINER_ADDR} oifname != \"{h}\" masquerade\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        if let Some(mut stdin) = nft.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| format!("nft: {e}"))?;
        }
        let out = nft.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["nft", "delete", "table", "ip", &self.name]);
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}
