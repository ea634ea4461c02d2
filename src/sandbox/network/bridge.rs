//! The network of a sandbox started as root: a TAP named `brig<lease index>`, the host's end
//! of the sandbox's /30 on it, an nft table ([`super::nft`]) for NAT and the egress policy,
//! and the userland proxy for published ports.

use super::{host, nft, proxy, NetworkError, Plan, SandboxNetwork};
use crate::vmm::Tap;

pub(super) fn setup(plan: Plan<'_>) -> Result<SandboxNetwork, NetworkError> {
    let link = plan.lease.link;
    // The published ports first: a port in use fails before anything else is made.
    let bound = if plan.opts.publish.is_empty() {
        None
    } else {
        Some(proxy::PortProxy::bind(&plan.opts.publish)?)
    };
    let tap = Tap::open(&format!("brig{}", link.index))?;
    host::configure(tap.name(), link.host, super::pool::LINK_PREFIX)?;
    host::enable_forwarding()?;
    let rules = nft::Rules {
        table: nft::table_name(plan.id),
        tap: tap.name().to_string(),
        guest: link.guest,
        allow: plan.allow.clone(),
    };
    // Applied while the VM starts: the keeper confirms it before the workload runs
    // ([`SandboxNetwork::confirm`]).
    let table = nft::Table::start(&rules)?;
    // Forwarding starts now: a client that comes before the guest listens is refused, as
    // by a container that is still starting.
    let proxy = bound.map(|p| p.start(link.guest)).transpose()?;
    let ports = proxy
        .as_ref()
        .map(|p| p.bound().to_vec())
        .unwrap_or_default();
    let interface = tap.name().to_string();
    let mut net = plan.finish(Box::new(tap), ("tap", &interface, super::MTU), ports);
    net.proxy = proxy;
    net.table = Some(table);
    Ok(net)
}
