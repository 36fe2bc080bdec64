//! Who wrote a record: this host's id (`/etc/machine-id`) and the agent's own id, read once
//! and shared by every format (ECS `host.id`/`agent.id`, OCSF `device.uid`/`metadata.product`).

use std::sync::OnceLock;

/// This host's name, as the kernel has it (ECS `host.name`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The agent's ECS `agent.type` and OCSF product name.
pub const AGENT_TYPE: &str = "snapmon";
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `/etc/machine-id` (32 hex digits), when the host has one.
    pub host_id: Option<String>,
    /// Stable per host, not the machine id itself: an application-specific id derived from it
    /// (as `sd_id128_get_machine_app_specific` does), so records do not leak the machine id
    /// twice and two agents' ids never collide with the host's.
    pub agent_id: Option<String>,
}

impl Identity {
    pub fn from_machine_id(text: &str) -> Self {
        let id = text.trim().to_ascii_lowercase();
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Identity::default();
        }
        let mac = super::key::hmac_sha256(id.as_bytes(), b"snapmon agent id v1");
        let h = hex::encode(&mac[..16]);
        let agent = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        Identity {
            host_id: Some(id),
            agent_id: Some(agent),
        }
    }
}

/// This host's identity, read on first use.
pub fn get() -> &'static Identity {
    static I: OnceLock<Identity> = OnceLock::new();
    I.get_or_init(|| {
        std::fs::read_to_string("/etc/machine-id")
            .map(|s| Identity::from_machine_id(&s))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_machine_id_and_none_from_garbage() {
        let i = Identity::from_machine_id("0123456789ABCDEF0123456789abcdef\n");
        assert_eq!(
            i.host_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        let a = i.agent_id.unwrap();
        assert_eq!(a.len(), 36);
        assert!(!a.replace('-', "").contains("0123456789abcdef"));
        assert_eq!(
            Identity::from_machine_id("uninitialized\n"),
            Identity::default()
        );
        assert_eq!(Identity::from_machine_id(""), Identity::default());
    }
}
