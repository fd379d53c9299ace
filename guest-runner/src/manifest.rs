//! The manifest embedded in the component as the `warren-manifest` custom section, so a
//! node can tell what a handler is and what it expects to be granted without running it.
//!
//! On wasm the static lands in a custom section of the core module inside the component.
//! On other targets (host-side unit tests) it is an ordinary static.

/// The manifest: which work types this component serves, which logical programs it asks
/// for (`*`: the `command` handler runs whatever program the node's config names), and
/// the arguments it runs ansible-runner with (`ansible::handle`; a command's arguments are
/// the node's own, so they are not declared).
pub(crate) const JSON: &str = concat!(
    r#"{"name":"guest-runner","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#"","work_types":["ansible-runner","command"],"capabilities":{"programs":["ansible-runner","*"],"#,
    r#""args":{"ansible-runner":{"prefix":["worker","--private-data-dir","."],"allow":["--worker-info","--delete"]}}}}"#
);

/// The manifest's bytes. `#[used]` keeps it although nothing reads it.
#[cfg_attr(target_arch = "wasm32", unsafe(link_section = "warren-manifest"))]
#[used]
static MANIFEST: [u8; JSON.len()] = to_array(JSON);

/// Copies `s` into an array of exactly its length, at compile time.
const fn to_array<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_json_naming_both_work_types() {
        let value: serde_json::Value = serde_json::from_slice(&MANIFEST).expect("valid JSON");
        assert_eq!(value["name"], "guest-runner");
        assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            value["work_types"],
            serde_json::json!(["ansible-runner", "command"])
        );
        assert_eq!(
            value["capabilities"]["programs"],
            serde_json::json!(["ansible-runner", "*"])
        );
        assert_eq!(
            value["capabilities"]["args"]["ansible-runner"]["prefix"],
            serde_json::json!(["worker", "--private-data-dir", "."])
        );
    }
}
