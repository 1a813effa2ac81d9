//! Loading: defaults ← TOML file (`--config`) ← `SHARDCAST_*` environment variables ←
//! command-line flags, and the error a refused configuration gets.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;

use super::Config;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Layers a TOML file (if any) under the flags and environment variables in `matches`, then
    /// validates the result. `cli` is `matches` already parsed into a `Config`; only values that
    /// came from the command line or the environment override the file.
    pub fn load(
        file: Option<&Path>,
        cli: &Config,
        matches: &clap::ArgMatches,
    ) -> Result<Config, ConfigError> {
        let config = Config::layer(file, cli, matches)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] without the validation, for tools that read one value of a server's
    /// configuration (`shardcast token` reads `jwt_secret`).
    pub fn layer(
        file: Option<&Path>,
        cli: &Config,
        matches: &clap::ArgMatches,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
        };
        let given = toml::Table::try_from(cli).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for id in matches.ids() {
            let explicit = matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if let (true, Some(value)) = (explicit, given.get(id.as_str())) {
                table.insert(id.to_string(), value.clone());
            }
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: e.to_string(),
            })
    }
}
