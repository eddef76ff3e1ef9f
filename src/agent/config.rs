//! The agent's configuration: command-line flags, `SHOAL_*` environment variables, a TOML file,
//! and named presets, resolved with precedence flag > env > file > preset.
//!
//! Clap reads flags and env (every field is optional there, so "not given" is visible); the file
//! fills what neither gave; the preset (`lan`, `wan`) fills the rest. `validate` checks what serde
//! cannot express. This module does no IO beyond reading the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::spec::DriverKind;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// One site or region: fast failure detection, short bid windows.
    Lan,
    /// Sites far apart over slow or lossy links: slower detection, fewer false positives.
    Wan,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    Docker,
    Process,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `shoal agent` flags. Every flag can also come from a `SHOAL_*` variable or the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// TOML config file (keys as the long flags, with `_` for `-`).
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state, identity, token, instance records and logs.
    /// Default: `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the local HTTP API (keep it on loopback; default 127.0.0.1:7800).
    #[arg(long, env = "SHOAL_API")]
    pub api: Option<SocketAddr>,
    /// Multiaddr to listen on for peers (repeatable; default /ip4/0.0.0.0/tcp/7801).
    #[arg(long, env = "SHOAL_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// Multiaddr peers should use to reach this node (repeatable), for NAT'd sites.
    #[arg(long, env = "SHOAL_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<String>,
    /// A seed node's multiaddr, peer id optional (repeatable). No seed: start a new cluster.
    #[arg(long, env = "SHOAL_SEEDS", value_delimiter = ',')]
    pub seed: Vec<String>,
    /// File holding the cluster's pre-shared key (from `shoal keygen`).
    #[arg(long, env = "SHOAL_CLUSTER_KEY_FILE")]
    pub cluster_key: Option<PathBuf>,
    /// A node label `key=value` (repeatable); `region` and `zone` are well known.
    #[arg(long = "label", env = "SHOAL_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// CPU this node offers (`2`, `0.5`, `500m`); default: measured (cgroup quota honoured).
    #[arg(long, env = "SHOAL_CPU")]
    pub cpu: Option<String>,
    /// Memory this node offers (`4Gi`, `512Mi`); default: measured (cgroup limit honoured).
    #[arg(long, env = "SHOAL_MEMORY")]
    pub memory: Option<String>,
    /// Runtimes to offer (repeatable). Default: docker when its daemon answers, and process.
    #[arg(
        long = "runtime",
        env = "SHOAL_RUNTIME",
        value_enum,
        value_delimiter = ','
    )]
    pub runtimes: Vec<RuntimeChoice>,
    /// Timing profile.
    #[arg(long, env = "SHOAL_PROFILE", value_enum)]
    pub profile: Option<Profile>,
    /// Log format on stderr.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// TEST ONLY: allow fault injection (loss, delay, partitions) through the API. Reported in
    /// `shoal status` when on. Never use in production.
    #[arg(long, env = "SHOAL_TEST_FAULTS", hide = true)]
    pub test_faults: bool,
    /// TEST ONLY: add this many milliseconds to the node's clock (clock-skew experiments).
    #[arg(
        long,
        env = "SHOAL_TEST_CLOCK_OFFSET_MS",
        hide = true,
        allow_negative_numbers = true
    )]
    pub test_clock_offset_ms: Option<i64>,
}

/// The config file. Same keys as the flags.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub api: Option<SocketAddr>,
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub advertise: Vec<String>,
    #[serde(default)]
    pub seed: Vec<String>,
    pub cluster_key: Option<PathBuf>,
    /// `{ region = "eu-west", zone = "a" }`
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    #[serde(default)]
    pub runtimes: Vec<RuntimeChoice>,
    pub profile: Option<Profile>,
    pub log_format: Option<LogFormat>,
    /// Overrides of the profile's failure-detector timing (`[swim]` table).
    #[serde(default)]
    pub swim: SwimOverrides,
}

/// `[swim]` in the config file: overrides of the profile's SWIM timing. Units are milliseconds.
/// Detection time is roughly `probe_period_ms + suspect_to_down_ms`; raise `probe_rtt_ms` and
/// `suspect_to_down_ms` on slow or overloaded machines to avoid false deaths, lower them for
/// faster detection on a quiet LAN.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SwimOverrides {
    /// Time between two probes started by one node (LAN 300–500, WAN 1000–5000).
    pub probe_period_ms: Option<u64>,
    /// Time to wait for a direct ack before indirect probes; must stay below the probe period.
    pub probe_rtt_ms: Option<u64>,
    /// Time a suspect has to refute before it is declared down.
    pub suspect_to_down_ms: Option<u64>,
    /// Members asked to probe indirectly (3–6).
    pub num_indirect_probes: Option<usize>,
    /// The ring watch (default on): each node heartbeats its predecessor on the ring of node
    /// ids every probe period and suspects a successor whose heartbeats stop, so a crash is
    /// suspected within 3 periods plus `probe_rtt_ms`. Costs one small datagram per node per
    /// period; turn it off only where that matters more than the detection bound.
    pub ring_watch: Option<bool>,
}

impl SwimOverrides {
    /// Applies the overrides to a profile's tuning.
    pub fn apply(&self, t: &mut crate::membership::SwimTuning) {
        if let Some(v) = self.probe_period_ms {
            t.probe_period_ms = v;
        }
        if let Some(v) = self.probe_rtt_ms {
            t.probe_rtt_ms = v;
        }
        if let Some(v) = self.suspect_to_down_ms {
            t.suspect_to_down_ms = v;
        }
        if let Some(v) = self.num_indirect_probes {
            t.num_indirect_probes = v;
        }
        if let Some(v) = self.ring_watch {
            t.ring_watch = v;
        }
    }
}

/// A config error: names the source and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("label {given:?} is not key=value (for example --label region=eu-west)")]
    Label { given: String },
    #[error("too many labels ({count}); at most {max}")]
    TooManyLabels { count: usize, max: usize },
    #[error("--cpu {given:?}: {reason} (write 2, 0.5 or 500m)")]
    Cpu { given: String, reason: String },
    #[error("--memory {given:?}: {reason} (write 4Gi, 512Mi or 1G)")]
    Memory { given: String, reason: String },
    #[error("no data dir: set --data-dir, or HOME or XDG_DATA_HOME")]
    NoDataDir,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub listen: Vec<String>,
    pub advertise: Vec<String>,
    pub seeds: Vec<String>,
    pub cluster_key: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Empty: automatic.
    pub runtimes: Vec<DriverKind>,
    pub profile: Profile,
    pub log_format: LogFormat,
    pub test_faults: bool,
    pub test_clock_offset_ms: i64,
    pub swim: SwimOverrides,
}

pub const MAX_LABELS: usize = 32;

/// The default data dir: `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Some(Path::new(&x).join("shoal"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".local/share/shoal"))
}

impl AgentArgs {
    /// Resolves flags and env (already in `self`), the file, and the preset.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let pick = |flag: &Vec<String>, file: &Vec<String>| {
            if flag.is_empty() {
                file.clone()
            } else {
                flag.clone()
            }
        };
        let mut labels = file.labels.clone();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| ConfigError::Label { given: l.clone() })?;
            if k.is_empty() || k.len() > 63 || v.len() > 128 {
                return Err(ConfigError::Label { given: l.clone() });
            }
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.len() > MAX_LABELS {
            return Err(ConfigError::TooManyLabels {
                count: labels.len(),
                max: MAX_LABELS,
            });
        }
        let cpu = self.cpu.clone().or(file.cpu.clone());
        let cpu_millis = cpu
            .map(|c| {
                crate::spec::parse_cpu(&c).map_err(|reason| ConfigError::Cpu {
                    given: c.clone(),
                    reason,
                })
            })
            .transpose()?;
        let memory = self.memory.clone().or(file.memory.clone());
        let memory_bytes = memory
            .map(|m| {
                crate::spec::parse_memory(&m).map_err(|reason| ConfigError::Memory {
                    given: m.clone(),
                    reason,
                })
            })
            .transpose()?;
        let runtimes = if self.runtimes.is_empty() {
            file.runtimes.clone()
        } else {
            self.runtimes.clone()
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .or_else(default_data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        let mut listen = pick(&self.listen, &file.listen);
        if listen.is_empty() {
            listen.push("/ip4/0.0.0.0/tcp/7801".into());
        }
        Ok(AgentConfig {
            data_dir,
            api: self
                .api
                .or(file.api)
                .unwrap_or_else(|| "127.0.0.1:7800".parse().expect("valid address")),
            listen,
            advertise: pick(&self.advertise, &file.advertise),
            seeds: pick(&self.seed, &file.seed),
            cluster_key: self.cluster_key.clone().or(file.cluster_key.clone()),
            labels,
            cpu_millis,
            memory_bytes,
            runtimes: runtimes
                .into_iter()
                .map(|r| match r {
                    RuntimeChoice::Docker => DriverKind::Docker,
                    RuntimeChoice::Process => DriverKind::Process,
                })
                .collect(),
            profile: self.profile.or(file.profile).unwrap_or(Profile::Lan),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            test_faults: self.test_faults,
            test_clock_offset_ms: self.test_clock_offset_ms.unwrap_or(0),
            swim: file.swim.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            "cpu = \"2\"\nmemory = \"1Gi\"\nprofile = \"wan\"\nlabels = { region = \"eu\" }\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(path),
            cpu: Some("500m".into()),
            labels: vec!["zone=a".into()],
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.cpu_millis, Some(500));
        assert_eq!(c.memory_bytes, Some(1 << 30));
        assert_eq!(c.profile, Profile::Wan);
        assert_eq!(c.labels.get("region").map(String::as_str), Some("eu"));
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.listen, vec!["/ip4/0.0.0.0/tcp/7801".to_string()]);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "cpus = 2\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            ..Default::default()
        };
        let e = args.resolve().unwrap_err().to_string();
        assert!(e.contains("cpus"), "{e}");
    }

    #[test]
    fn a_label_without_equals_is_refused() {
        let args = AgentArgs {
            labels: vec!["region".into()],
            data_dir: Some("/tmp".into()),
            ..Default::default()
        };
        assert!(
            args.resolve()
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );
    }
}
