//! The `[[allow]]` sections as written, and their decoding into the [`AccessPolicy`].

use serde::Deserialize;
use toml::Spanned;

use super::super::error::{ConfigError, Problem};
use super::Decoder;
use crate::access::{AccessPolicy, WorkGrant, WorkTypes};

/// An `[[allow]]` entry: what `who` may do on this node over the mesh.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct AllowSection {
    who: Spanned<String>,
    #[serde(default)]
    work_types: Vec<Spanned<String>>,
    control: Option<Spanned<bool>>,
    deploy: Option<Spanned<bool>>,
}

impl Decoder<'_> {
    pub(super) fn access(&self, sections: &[AllowSection]) -> Result<AccessPolicy, ConfigError> {
        let mut policy = AccessPolicy::default();
        for (i, section) in sections.iter().enumerate() {
            let key = format!("[[allow]] #{}", i + 1);
            let who: crate::access::Who =
                self.parse(&section.who, &format!("{key} who"), |s| Ok(s.parse()?))?;
            let control = section.control.as_ref().is_some_and(|c| *c.get_ref());
            let deploy = section.deploy.as_ref().is_some_and(|d| *d.get_ref());
            if section.work_types.is_empty() && !control && !deploy {
                return Err(self.error(section.who.span(), key, Problem::EmptyGrant));
            }
            for work_type in &section.work_types {
                let work_types =
                    self.parse(work_type, &format!("{key} work-types"), |s| match s {
                        "*" => Ok(WorkTypes::Any),
                        name if crate::mesh::advert::is_work_type_name(name) => {
                            Ok(WorkTypes::Named(name.to_owned()))
                        }
                        _ => Err(Problem::WorkTypePattern {
                            value: s.to_owned(),
                        }),
                    })?;
                policy.work.push(WorkGrant {
                    work_types,
                    who: who.clone(),
                });
            }
            if control {
                policy.control.push(who.clone());
            }
            if deploy {
                policy.deploy.push(who);
            }
        }
        Ok(policy)
    }
}
