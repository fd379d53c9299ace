//! The TOML file as written, and its conversion to [`Config`].
//!
//! Serde checks the shape (unknown keys, types, required keys); values that need
//! validating are kept as [`Spanned`] text so that an error can name the line and the key.
//! New sections and keys are added as optional fields, so existing files keep parsing;
//! the work sections (`[[work-type]]`, `[[signer]]`, `[ansible-runner]`) live in `work`.

mod access;
mod work;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::id::{NameError, NodeId};

use crate::host::contain::ContainMode;

use super::error::{AddrRole, ConfigError, Origin, Problem};
use super::{
    AddrError, CertificatesConfig, Config, ControlConfig, DEFAULT_CONTROL_PERMISSIONS,
    EndpointAddr, LinkCost, ListenConfig, MeshTuning, PeerConfig, TlsConfig, TrustEntry,
    WorkLimits,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    node: NodeSection,
    #[serde(default)]
    listen: Vec<EndpointSection>,
    #[serde(default)]
    peer: Vec<EndpointSection>,
    #[serde(default)]
    trust: Vec<TrustSection>,
    #[serde(default)]
    link_costs: BTreeMap<String, Spanned<f64>>,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    mesh: MeshSection,
    #[serde(default)]
    work: WorkSection,
    #[serde(default)]
    work_type: Vec<work::WorkTypeSection>,
    #[serde(default)]
    signer: Vec<work::SignerSection>,
    #[serde(default)]
    ansible_runner: work::AnsibleRunnerSection,
    #[serde(default)]
    certificates: CertificatesSection,
    #[serde(default)]
    allow: Vec<access::AllowSection>,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    tls: TlsSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CertificatesSection {
    #[serde(default)]
    authorities: Vec<Spanned<String>>,
    cert: Option<Spanned<String>>,
    #[serde(default)]
    revocations: Vec<Spanned<String>>,
}

/// `[tls]`: certificate and key of `wss://` listeners, extra roots for `wss://` peers.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsSection {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    ca: Vec<Spanned<String>>,
}

/// `[metrics]`: where to serve `/metrics`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MetricsSection {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NodeSection {
    id: Spanned<String>,
    data_dir: Spanned<String>,
    key_file: Spanned<String>,
    log_level: Option<Spanned<String>>,
}

/// A `[[listen]]` or `[[peer]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EndpointSection {
    address: Spanned<String>,
    cost: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TrustSection {
    key: Spanned<String>,
    node: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ControlSection {
    socket: Option<Spanned<String>>,
    permissions: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MeshSection {
    keepalive_seconds: Option<Spanned<u64>>,
    idle_timeout_seconds: Option<Spanned<u64>>,
    rekey_minutes: Option<Spanned<u64>>,
    max_hops: Option<Spanned<u64>>,
    max_first_seen: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WorkSection {
    max_running: Option<Spanned<u64>>,
    max_payload_mb: Option<Spanned<u64>>,
    keep_finished_hours: Option<Spanned<u64>>,
    signing_key: Option<Spanned<String>>,
    #[serde(default)]
    verify_keys: Vec<Spanned<String>>,
    require_signed: Option<Spanned<bool>>,
    drain_on_stop: Option<Spanned<bool>>,
    free_space_floor_mb: Option<Spanned<u64>>,
    mirror_output_mb: Option<Spanned<u64>>,
    content_cache_mb: Option<Spanned<u64>>,
    max_units_per_submitter: Option<Spanned<u64>>,
    containment: Option<Spanned<String>>,
    job_users: Option<Spanned<String>>,
}

/// Allowed range of `[work] max-running`.
const MAX_RUNNING: (u64, u64) = (1, 4_096);
/// Allowed range of `[work] max-payload-mb`: up to 1 TiB.
const MAX_PAYLOAD_MB: (u64, u64) = (1, 1 << 20);
/// Allowed range of `[work] max-units-per-submitter`.
const MAX_UNITS_PER_SUBMITTER: (u64, u64) = (1, 10_000_000);
/// Allowed range of `[work] content-cache-mb`: off, up to a pebibyte.
const CONTENT_CACHE_MB: (u64, u64) = (0, 1 << 30);
/// Allowed range of `[work] free-space-floor-mb`: off, up to a pebibyte.
const FREE_SPACE_FLOOR_MB: (u64, u64) = (0, 1 << 30);
/// Allowed range of `[work] mirror-output-mb`: 1 MiB up to a pebibyte (never off: the
/// node a unit ran on decides how much it sends back).
const MIRROR_OUTPUT_MB: (u64, u64) = (1, 1 << 30);

/// Allowed range of `[work] keep-finished-hours` (0 keeps finished units until released).
const KEEP_FINISHED_HOURS: (u64, u64) = (0, 24 * 366);

/// Allowed range of `keepalive-seconds`: up to an hour.
const KEEPALIVE_SECONDS: (u64, u64) = (1, 3_600);
/// Allowed range of `idle-timeout-seconds`: up to a day.
const IDLE_TIMEOUT_SECONDS: (u64, u64) = (1, 86_400);
/// Allowed range of `rekey-minutes`: up to a week.
const REKEY_MINUTES: (u64, u64) = (1, 10_080);
/// Allowed range of `max-hops`: it travels as a `u8`.
const MAX_HOPS: (u64, u64) = (1, 255);

/// Allowed range of `max-first-seen`: at most the database's node cap.
const MAX_FIRST_SEEN: (u64, u64) = (0, 10_000);

/// Parses a config file's text and checks each value (the checks across settings are the
/// caller's); `path` names it in errors and is the base of relative paths.
pub(super) fn decode(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Decoder { path, text }.config(file)
}

/// The file being decoded: names it and its lines in errors.
struct Decoder<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Decoder<'_> {
    fn config(&self, file: ConfigFile) -> Result<Config, ConfigError> {
        let node = file.node;
        let listen = file.listen.into_iter().enumerate();
        let peers = file.peer.into_iter().enumerate();
        Ok(Config {
            node_id: self.parse(&node.id, "[node] id", |s| Ok(s.parse()?))?,
            data_dir: self.path_value(&node.data_dir, "[node] data-dir")?,
            key_file: self.path_value(&node.key_file, "[node] key-file")?,
            listen: listen
                .map(|(i, l)| self.listen(i, l))
                .collect::<Result<_, _>>()?,
            peers: peers
                .map(|(i, p)| self.peer(i, p))
                .collect::<Result<_, _>>()?,
            trust: (file.trust.into_iter().enumerate())
                .map(|(i, t)| self.trust(i, t))
                .collect::<Result<_, _>>()?,
            link_costs: (file.link_costs.into_iter())
                .map(|(node, cost)| self.link_cost(&node, &cost))
                .collect::<Result<_, _>>()?,
            control: self.control(file.control)?,
            mesh: self.mesh(&file.mesh)?,
            work: self.work(&file.work)?,
            work_types: (file.work_type.iter().enumerate())
                .map(|(i, w)| self.work_type(i, w))
                .collect::<Result<_, _>>()?,
            signers: (file.signer.iter().enumerate())
                .map(|(i, s)| self.signer(i, s))
                .collect::<Result<_, _>>()?,
            ansible_runner: self.ansible_runner(&file.ansible_runner)?,
            certificates: self.certificates(&file.certificates)?,
            access: self.access(&file.allow)?,
            metrics: (file.metrics.listen.as_ref())
                .map(|l| {
                    self.parse(l, "[metrics] listen", |s| {
                        s.parse()
                            .map_err(|source| address_problem(s, AddrRole::Listen, source))
                    })
                })
                .transpose()?,
            tls: self.tls(&file.tls)?,
            log_level: (node.log_level.as_ref())
                .map(|l| {
                    self.parse(l, "[node] log-level", |s| {
                        crate::logging::filter_for(s)?;
                        Ok(s.trim().to_owned())
                    })
                })
                .transpose()?,
        })
    }

    fn certificates(
        &self,
        section: &CertificatesSection,
    ) -> Result<CertificatesConfig, ConfigError> {
        let authorities = (section.authorities.iter().enumerate())
            .map(|(i, a)| {
                let key = format!("[certificates] authorities #{}", i + 1);
                self.parse(a, &key, |s| Ok(s.parse()?))
            })
            .collect::<Result<_, _>>()?;
        let cert = match &section.cert {
            None => None,
            Some(c) => Some(self.path_value(c, "[certificates] cert")?),
        };
        let revocations = (section.revocations.iter().enumerate())
            .map(|(i, r)| self.path_value(r, &format!("[certificates] revocations #{}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(CertificatesConfig {
            authorities,
            cert,
            revocations,
        })
    }

    fn tls(&self, tls: &TlsSection) -> Result<TlsConfig, ConfigError> {
        let path = |v: &Option<Spanned<String>>, key| {
            v.as_ref().map(|v| self.path_value(v, key)).transpose()
        };
        Ok(TlsConfig {
            cert: path(&tls.cert, "[tls] cert")?,
            key: path(&tls.key, "[tls] key")?,
            ca: (tls.ca.iter())
                .map(|c| self.path_value(c, "[tls] ca"))
                .collect::<Result<_, _>>()?,
        })
    }

    fn listen(&self, i: usize, entry: EndpointSection) -> Result<ListenConfig, ConfigError> {
        let key = format!("[[listen]] #{}", i + 1);
        let addr = self.parse(&entry.address, &format!("{key} address"), |s| {
            s.parse()
                .map_err(|source| address_problem(s, AddrRole::Listen, source))
        })?;
        let cost = self.cost(entry.cost.as_ref(), &key)?;
        Ok(ListenConfig { addr, cost })
    }

    fn peer(&self, i: usize, entry: EndpointSection) -> Result<PeerConfig, ConfigError> {
        let key = format!("[[peer]] #{}", i + 1);
        let addr = self.parse(&entry.address, &format!("{key} address"), |s| {
            EndpointAddr::parse_peer(s).map_err(|source| address_problem(s, AddrRole::Peer, source))
        })?;
        let cost = self.cost(entry.cost.as_ref(), &key)?;
        Ok(PeerConfig { addr, cost })
    }

    fn cost(&self, cost: Option<&Spanned<f64>>, entry: &str) -> Result<LinkCost, ConfigError> {
        match cost {
            None => Ok(LinkCost::DEFAULT),
            Some(cost) => LinkCost::new(*cost.get_ref())
                .map_err(|e| self.error(cost.span(), format!("{entry} cost"), e.into())),
        }
    }

    fn trust(&self, i: usize, entry: TrustSection) -> Result<TrustEntry, ConfigError> {
        let key = format!("[[trust]] #{}", i + 1);
        Ok(TrustEntry {
            key: self.parse(&entry.key, &format!("{key} key"), |s| Ok(s.parse()?))?,
            node: match &entry.node {
                None => None,
                Some(node) => Some(self.parse(node, &format!("{key} node"), |s| Ok(s.parse()?))?),
            },
        })
    }

    fn link_cost(
        &self,
        node: &str,
        cost: &Spanned<f64>,
    ) -> Result<(NodeId, LinkCost), ConfigError> {
        let key = format!("[link-costs] {node}");
        let id = node
            .parse()
            .map_err(|e: NameError| self.error(cost.span(), &key, e.into()))?;
        let cost =
            LinkCost::new(*cost.get_ref()).map_err(|e| self.error(cost.span(), &key, e.into()))?;
        Ok((id, cost))
    }

    fn control(&self, control: ControlSection) -> Result<ControlConfig, ConfigError> {
        let socket = match &control.socket {
            None => None,
            Some(socket) => Some(self.path_value(socket, "[control] socket")?),
        };
        let permissions = match &control.permissions {
            None => DEFAULT_CONTROL_PERMISSIONS,
            Some(mode) => self.parse(mode, "[control] permissions", |s| {
                super::parse_mode(s).ok_or_else(|| Problem::Permissions { value: s.into() })
            })?,
        };
        Ok(ControlConfig {
            socket,
            permissions,
        })
    }

    fn work(&self, work: &WorkSection) -> Result<WorkLimits, ConfigError> {
        let defaults = WorkLimits::default();
        let running = self.bounded(work.max_running.as_ref(), "[work] max-running", MAX_RUNNING)?;
        let payload = self.bounded(
            work.max_payload_mb.as_ref(),
            "[work] max-payload-mb",
            MAX_PAYLOAD_MB,
        )?;
        let keep = self.bounded(
            work.keep_finished_hours.as_ref(),
            "[work] keep-finished-hours",
            KEEP_FINISHED_HOURS,
        )?;
        let floor = self.bounded(
            work.free_space_floor_mb.as_ref(),
            "[work] free-space-floor-mb",
            FREE_SPACE_FLOOR_MB,
        )?;
        let mirror = self.bounded(
            work.mirror_output_mb.as_ref(),
            "[work] mirror-output-mb",
            MIRROR_OUTPUT_MB,
        )?;
        let cache = self.bounded(
            work.content_cache_mb.as_ref(),
            "[work] content-cache-mb",
            CONTENT_CACHE_MB,
        )?;
        let held = self.bounded(
            work.max_units_per_submitter.as_ref(),
            "[work] max-units-per-submitter",
            MAX_UNITS_PER_SUBMITTER,
        )?;
        let signing_key = match &work.signing_key {
            None => None,
            Some(path) => Some(self.path_value(path, "[work] signing-key")?),
        };
        let verify_keys = (work.verify_keys.iter().enumerate())
            .map(|(i, k)| {
                let key = format!("[work] verify-keys #{}", i + 1);
                self.parse(k, &key, |s| Ok(s.parse()?))
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkLimits {
            max_running: running.map_or(defaults.max_running, |n| usize::try_from(n).unwrap_or(1)),
            max_payload: payload.map_or(defaults.max_payload, |mb| mb << 20),
            free_space_floor: floor.map_or(defaults.free_space_floor, |mb| mb << 20),
            mirror_output: mirror.map_or(defaults.mirror_output, |mb| mb << 20),
            content_cache: cache.map_or(defaults.content_cache, |mb| mb << 20),
            max_units_per_submitter: held.map_or(defaults.max_units_per_submitter, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
            keep_finished: keep.map_or(defaults.keep_finished, |h| {
                (h > 0).then(|| Duration::from_secs(h * 3600))
            }),
            signing_key,
            verify_keys,
            require_signed: work.require_signed.as_ref().is_some_and(|r| *r.get_ref()),
            drain_on_stop: work.drain_on_stop.as_ref().is_some_and(|d| *d.get_ref()),
            containment: self.containment(work)?,
            job_users: (work.job_users.as_ref())
                .map(|v| self.parse(v, "[work] job-users", |s| Ok(s.parse()?)))
                .transpose()?,
        })
    }

    fn containment(&self, work: &WorkSection) -> Result<ContainMode, ConfigError> {
        let Some(value) = &work.containment else {
            return Ok(WorkLimits::default().containment);
        };
        self.parse(value, "[work] containment", |s| match s {
            "auto" => Ok(ContainMode::Auto),
            "cgroup" => Ok(ContainMode::Cgroup),
            "subreaper" => Ok(ContainMode::Subreaper),
            _ => Err(Problem::UnknownChoice {
                value: s.into(),
                accepted: "auto, cgroup, subreaper",
            }),
        })
    }

    fn mesh(&self, mesh: &MeshSection) -> Result<MeshTuning, ConfigError> {
        let defaults = MeshTuning::default();
        let seconds = |value: &Option<Spanned<u64>>, key, range, default: Duration| {
            self.bounded(value.as_ref(), key, range)
                .map(|n| n.map_or(default, Duration::from_secs))
        };
        let keepalive = seconds(
            &mesh.keepalive_seconds,
            "[mesh] keepalive-seconds",
            KEEPALIVE_SECONDS,
            defaults.keepalive,
        )?;
        let idle_timeout = seconds(
            &mesh.idle_timeout_seconds,
            "[mesh] idle-timeout-seconds",
            IDLE_TIMEOUT_SECONDS,
            defaults.idle_timeout,
        )?;
        let rekey = self.bounded(
            mesh.rekey_minutes.as_ref(),
            "[mesh] rekey-minutes",
            REKEY_MINUTES,
        )?;
        let hops = self.bounded(mesh.max_hops.as_ref(), "[mesh] max-hops", MAX_HOPS)?;
        let first_seen = self.bounded(
            mesh.max_first_seen.as_ref(),
            "[mesh] max-first-seen",
            MAX_FIRST_SEEN,
        )?;
        Ok(MeshTuning {
            keepalive,
            idle_timeout,
            rekey_interval: rekey.map_or(defaults.rekey_interval, |m| Duration::from_secs(m * 60)),
            // `bounded` kept it within 1..=255.
            max_hops: hops.map_or(defaults.max_hops, |n| u8::try_from(n).unwrap_or(u8::MAX)),
            // `bounded` kept it within 0..=10,000.
            max_first_seen: first_seen.map_or(defaults.max_first_seen, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        })
    }

    /// An optional number that must lie in `(min, max)` inclusive.
    fn bounded(
        &self,
        value: Option<&Spanned<u64>>,
        key: &str,
        (min, max): (u64, u64),
    ) -> Result<Option<u64>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let n = *value.get_ref();
        if (min..=max).contains(&n) {
            Ok(Some(n))
        } else {
            let problem = Problem::OutOfRange { value: n, min, max };
            Err(self.error(value.span(), key, problem))
        }
    }

    /// A path setting: non-empty, and relative to the config file's directory.
    fn path_value(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        self.parse(value, key, |s| {
            if s.is_empty() {
                return Err(Problem::EmptyPath);
            }
            let base = self.path.parent().unwrap_or(Path::new(""));
            Ok(base.join(s))
        })
    }

    fn parse<T>(
        &self,
        value: &Spanned<String>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, Problem>,
    ) -> Result<T, ConfigError> {
        parse(value.get_ref()).map_err(|problem| self.error(value.span(), key, problem))
    }

    fn error(&self, span: Range<usize>, key: impl Into<String>, problem: Problem) -> ConfigError {
        let line = self
            .text
            .get(..span.start)
            .map(|before| before.matches('\n').count() + 1);
        let origin = Origin::File {
            path: self.path.to_owned(),
            line,
        };
        ConfigError::invalid(origin, key, problem)
    }
}

fn address_problem(value: &str, role: AddrRole, source: AddrError) -> Problem {
    Problem::Address {
        value: value.to_owned(),
        role,
        source,
    }
}
