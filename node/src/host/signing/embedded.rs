//! The unsigned manifest a component carries in a `warren-manifest` custom section, which
//! supplies defaults when signing. Nothing here is trusted: only the signed manifest is.

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

use super::Capabilities;

/// Name of the custom section holding a component's [`EmbeddedManifest`].
pub const MANIFEST_SECTION: &str = "warren-manifest";

/// What a component says about itself in its `warren-manifest` custom section (JSON).
///
/// `capabilities.env` may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedManifest {
    /// The component's name.
    pub name: String,
    /// The component's version.
    pub version: String,
    /// The work types it handles.
    pub work_types: Vec<String>,
    /// What it asks to be allowed to do.
    pub capabilities: Capabilities,
}

/// Why a component's embedded manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedManifestError {
    /// The bytes are not a WebAssembly component or module.
    #[error("not a WebAssembly component: {0}")]
    NotWasm(String),
    /// The `warren-manifest` section is not the expected JSON.
    #[error("the {MANIFEST_SECTION} custom section is not valid: {0}")]
    BadJson(String),
    /// More than one `warren-manifest` section, so which one applies is ambiguous.
    #[error("the component has more than one {MANIFEST_SECTION} custom section")]
    Duplicate,
}

/// Finds the `warren-manifest` custom section anywhere in `component`, including inside
/// nested core modules and components. `Ok(None)` when there is none.
///
/// # Errors
/// [`EmbeddedManifestError::NotWasm`] when `component` does not parse as WebAssembly,
/// [`EmbeddedManifestError::BadJson`] when the section is not a manifest, and
/// [`EmbeddedManifestError::Duplicate`] when there are several.
pub fn embedded_manifest(
    component: &[u8],
) -> Result<Option<EmbeddedManifest>, EmbeddedManifestError> {
    let mut found = None;
    // `parse_all` descends into nested module and component sections by itself.
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| EmbeddedManifestError::NotWasm(e.to_string()))?;
        let Payload::CustomSection(section) = payload else {
            continue;
        };
        if section.name() != MANIFEST_SECTION {
            continue;
        }
        if found.is_some() {
            return Err(EmbeddedManifestError::Duplicate);
        }
        let manifest = serde_json::from_slice(section.data())
            .map_err(|e| EmbeddedManifestError::BadJson(e.to_string()))?;
        found = Some(manifest);
    }
    Ok(found)
}
