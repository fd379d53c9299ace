//! The caps on what a worker's artifacts and job events may take on the client, and how a
//! user raises each (a `warren run` flag or an environment variable).

/// What the client accepts from a worker's artifacts. The defaults are far above what a
/// real Ansible run leaves (its artifacts are `stdout`, a few small files, and a fact
/// cache file per host) and far below what fills a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Largest artifacts zip, bytes (the stream's `{"zipfile": N}`).
    pub zip_bytes: u64,
    /// Most bytes written when unpacking it.
    pub unpacked_bytes: u64,
    /// Most entries (files, directories, links) in it.
    pub entries: u64,
    /// Largest unpacked : packed ratio of one entry over [`RATIO_FLOOR`](super::RATIO_FLOOR).
    pub ratio: u64,
    /// Most job events written to `job_events/` (one file each).
    pub events: u64,
    /// Most bytes of job events written to `job_events/`, all files together.
    pub event_bytes: u64,
}

impl ArtifactLimits {
    /// 1 GiB zipped, 1 GiB unpacked, a million entries, 500:1; a million job events of
    /// 4 GiB in all. A real playbook's event is 1 to 5 KiB (a task's result on one host),
    /// and AWX calls a job of a hundred thousand events large: a million events, and 4 GiB
    /// (a million at 4 KiB, or thousands of events carrying large registered results),
    /// leave real runs far below the caps and stop a worker that streams events without
    /// end long before the disk is full (each line may be up to 64 MiB).
    pub const DEFAULT: Self = Self {
        zip_bytes: 1 << 30,
        unpacked_bytes: 1 << 30,
        entries: 1_000_000,
        ratio: 500,
        events: 1_000_000,
        event_bytes: 4 << 30,
    };

    /// The defaults, with each cap its environment variable sets (as `warren run` reads
    /// them when no flag is given): for the Python package.
    ///
    /// # Errors
    /// [`LimitEnvError`]: the variable and what is wrong with its value.
    pub fn from_env() -> Result<Self, LimitEnvError> {
        let mut limits = Self::DEFAULT;
        for limit in [
            Limit::ZipBytes,
            Limit::UnpackedBytes,
            Limit::Entries,
            Limit::Ratio,
            Limit::Events,
            Limit::EventBytes,
        ] {
            let Some(value) = std::env::var_os(limit.env()) else {
                continue;
            };
            let value = value.to_string_lossy();
            let parsed = match limit {
                Limit::ZipBytes | Limit::UnpackedBytes | Limit::EventBytes => {
                    parse_size(&value).map_err(LimitValueError::Size)
                }
                Limit::Entries | Limit::Ratio | Limit::Events => {
                    value
                        .trim()
                        .parse()
                        .map_err(|_| LimitValueError::NotANumber {
                            value: value.clone().into_owned(),
                        })
                }
            }
            .map_err(|problem| LimitEnvError {
                var: limit.env(),
                problem,
            })?;
            match limit {
                Limit::ZipBytes => limits.zip_bytes = parsed,
                Limit::UnpackedBytes => limits.unpacked_bytes = parsed,
                Limit::Entries => limits.entries = parsed,
                Limit::Ratio => limits.ratio = parsed,
                Limit::Events => limits.events = parsed,
                Limit::EventBytes => limits.event_bytes = parsed,
            }
        }
        Ok(limits)
    }

    pub(super) fn cap(&self, limit: Limit) -> u64 {
        match limit {
            Limit::ZipBytes => self.zip_bytes,
            Limit::UnpackedBytes => self.unpacked_bytes,
            Limit::Entries => self.entries,
            Limit::Ratio => self.ratio,
            Limit::Events => self.events,
            Limit::EventBytes => self.event_bytes,
        }
    }
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A cap's environment variable whose value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("${var}: {problem}")]
pub struct LimitEnvError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with its value.
    #[source]
    pub problem: LimitValueError,
}

/// What is wrong with a cap's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitValueError {
    /// A byte cap that is not a size.
    #[error(transparent)]
    Size(SizeError),
    /// A count that is not a number.
    #[error("{value:?} is not a number")]
    NotANumber {
        /// The value.
        value: String,
    },
}

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not digits with an optional K, M, G or T.
    #[error("{text:?} is not a size (examples: 1048576, 512M, 2G)")]
    NotASize {
        /// The text.
        text: String,
    },
    /// More bytes than a `u64` counts.
    #[error("{text:?} is too large")]
    TooLarge {
        /// The text.
        text: String,
    },
}

/// A byte count: digits with an optional K, M, G or T (powers of 1024; `KiB`, `MB` and the
/// like are read the same way).
///
/// # Errors
/// [`SizeError`]: what is wrong with `text`, with examples.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let not_a_size = || SizeError::NotASize {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let unit = lower.trim_end_matches("ib").trim_end_matches('b');
    let digits_end = unit
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(unit.len());
    let (digits, suffix) = unit.split_at(digits_end);
    let shift = match suffix {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(not_a_size()),
    };
    let number: u64 = digits.parse().map_err(|_| not_a_size())?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| SizeError::TooLarge {
            text: text.to_owned(),
        })
}

/// One of the [`ArtifactLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`ArtifactLimits::zip_bytes`].
    ZipBytes,
    /// [`ArtifactLimits::unpacked_bytes`].
    UnpackedBytes,
    /// [`ArtifactLimits::entries`].
    Entries,
    /// [`ArtifactLimits::ratio`].
    Ratio,
    /// [`ArtifactLimits::events`].
    Events,
    /// [`ArtifactLimits::event_bytes`].
    EventBytes,
}

impl Limit {
    /// The `warren run` flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::ZipBytes => "--artifacts-max-zip",
            Self::UnpackedBytes => "--artifacts-max-bytes",
            Self::Entries => "--artifacts-max-entries",
            Self::Ratio => "--artifacts-max-ratio",
            Self::Events => "--artifacts-max-events",
            Self::EventBytes => "--artifacts-max-event-bytes",
        }
    }

    /// The environment variable that sets it.
    pub fn env(self) -> &'static str {
        match self {
            Self::ZipBytes => "WARREN_ARTIFACTS_MAX_ZIP",
            Self::UnpackedBytes => "WARREN_ARTIFACTS_MAX_BYTES",
            Self::Entries => "WARREN_ARTIFACTS_MAX_ENTRIES",
            Self::Ratio => "WARREN_ARTIFACTS_MAX_RATIO",
            Self::Events => "WARREN_ARTIFACTS_MAX_EVENTS",
            Self::EventBytes => "WARREN_ARTIFACTS_MAX_EVENT_BYTES",
        }
    }

    /// What the cap is, with its value `cap`.
    pub fn describe(self, cap: u64) -> String {
        match self {
            Self::ZipBytes => format!("artifacts zip size cap of {cap} bytes"),
            Self::UnpackedBytes => format!("unpacked artifacts cap of {cap} bytes"),
            Self::Entries => format!("artifacts entry cap of {cap} entries"),
            Self::Ratio => format!("compression ratio cap of {cap}:1"),
            Self::Events => format!("job events cap of {cap} events"),
            Self::EventBytes => format!("job events cap of {cap} bytes"),
        }
    }
}
