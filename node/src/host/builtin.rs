//! The work handler components built into the node. `build.rs` compiles `guest-runner/` for
//! `wasm32-wasip2` and this module embeds the result; no IO.

/// `guest-runner` as a WebAssembly component: serves the `ansible-runner` and `command`
/// handlers of the `warren:worker/work-handler` world. Its `warren-manifest` custom section
/// (in the core module inside) describes it as JSON.
pub static GUEST_RUNNER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest_runner.wasm"));

#[cfg(test)]
mod tests {
    use super::*;

    /// `\0asm`, then version 0x0d and layer 1: a component, not a core module.
    const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn guest_runner_is_a_component() {
        assert_eq!(GUEST_RUNNER.get(..8), Some(&COMPONENT_PREAMBLE[..]));
    }

    #[test]
    fn guest_runner_embeds_its_manifest() {
        let name = b"warren-manifest";
        assert!(GUEST_RUNNER.windows(name.len()).any(|w| w == name));
        let work_types = br#""work_types":["ansible-runner","command"]"#;
        assert!(
            GUEST_RUNNER
                .windows(work_types.len())
                .any(|w| w == work_types)
        );
    }
}
