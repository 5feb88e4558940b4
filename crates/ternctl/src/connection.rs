//! Where the Tern APIs are and how to authenticate: flags win over the environment,
//! the environment over `.tern/dev.env` (found in the current directory or a parent).

use clap::Args;

use crate::client::Client;
use crate::env_file::EnvFile;

/// Help heading of the flags every API command takes.
const CONNECTION: &str = "Connection and output";

/// Connection flags shared by every API command (clap reads the environment too).
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Base URL of the public API (else from .tern/dev.env).
    #[arg(long, global = true, env = "TERN_URL", value_name = "URL", help_heading = CONNECTION)]
    url: Option<String>,

    /// API key (else from .tern/dev.env).
    #[arg(
        long,
        global = true,
        env = "TERN_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        help_heading = CONNECTION
    )]
    api_key: Option<String>,

    /// Base URL of the admin API (else from .tern/dev.env).
    #[arg(long, global = true, env = "TERN_ADMIN_URL", value_name = "URL", help_heading = CONNECTION)]
    admin_url: Option<String>,

    /// Admin token (else from .tern/dev.env).
    #[arg(
        long,
        global = true,
        env = "TERN_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = CONNECTION
    )]
    admin_token: Option<String>,

    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true, help_heading = CONNECTION)]
    pub json: bool,
}

/// Which API a command talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/…` with an API key.
    Public,
    /// `/admin/v1/…` with the admin token.
    Admin,
}

/// A resolved base URL and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash.
    pub base: String,
    /// Bearer token.
    pub token: String,
}

/// A setting found nowhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "no {what}: pass {flag} or set {var}{hint}",
    hint = match file {
        Some(path) => format!(" ({path} does not set it)"),
        None => " (or start Tern with `make run`, which writes .tern/dev.env)".into(),
    }
)]
pub struct Missing {
    what: &'static str,
    flag: &'static str,
    var: &'static str,
    file: Option<String>,
}

impl ConnectionArgs {
    /// A client of `api`, with settings from the flags, the environment or the
    /// nearest `.tern/dev.env`.
    pub fn client(&self, api: Api) -> anyhow::Result<Client> {
        let file = EnvFile::discover(&std::env::current_dir()?)?;
        Client::new(api, self.endpoint(api, &file)?)
    }

    /// The endpoint of `api`, each setting taken from the flags/environment or else
    /// from `file`.
    pub fn endpoint(&self, api: Api, file: &EnvFile) -> Result<Endpoint, Missing> {
        let setting = |given: &Option<String>, what, flag, var: &'static str| {
            given
                .as_deref()
                .filter(|v| !v.is_empty())
                .or_else(|| file.get(var))
                .map(str::to_string)
                .ok_or_else(|| Missing {
                    what,
                    flag,
                    var,
                    file: file.path.as_ref().map(|p| p.display().to_string()),
                })
        };
        let (base, token) = match api {
            Api::Public => (
                setting(&self.url, "API URL", "--url", "TERN_URL")?,
                setting(&self.api_key, "API key", "--api-key", "TERN_API_KEY")?,
            ),
            Api::Admin => (
                setting(
                    &self.admin_url,
                    "admin URL",
                    "--admin-url",
                    "TERN_ADMIN_URL",
                )?,
                setting(
                    &self.admin_token,
                    "admin token",
                    "--admin-token",
                    "TERN_ADMIN_TOKEN",
                )?,
            ),
        };
        Ok(Endpoint {
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags as clap would have filled them (built directly: the environment of the
    /// test run must not leak in).
    fn flags(
        url: Option<&str>,
        api_key: Option<&str>,
        admin_token: Option<&str>,
    ) -> ConnectionArgs {
        ConnectionArgs {
            url: url.map(Into::into),
            api_key: api_key.map(Into::into),
            admin_url: None,
            admin_token: admin_token.map(Into::into),
            json: false,
        }
    }

    fn file(text: &str) -> EnvFile {
        let mut file = EnvFile::parse(text).unwrap();
        file.path = Some("/repo/.tern/dev.env".into());
        file
    }

    #[test]
    fn flags_win_over_the_file() {
        let args = flags(Some("http://flag/"), None, Some("flag-token"));
        let env = file(
            "TERN_URL=http://file\nTERN_API_KEY=file-key\n\
             TERN_ADMIN_URL=http://admin\nTERN_ADMIN_TOKEN=file-token\n",
        );
        assert_eq!(
            args.endpoint(Api::Public, &env),
            Ok(Endpoint {
                base: "http://flag".into(),
                token: "file-key".into()
            })
        );
        assert_eq!(
            args.endpoint(Api::Admin, &env),
            Ok(Endpoint {
                base: "http://admin".into(),
                token: "flag-token".into()
            })
        );
    }

    #[test]
    fn a_missing_setting_says_where_it_was_looked_for() {
        let args = flags(Some("http://x"), None, None);
        let err = args
            .endpoint(Api::Public, &file("TERN_URL=http://file\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no API key: pass --api-key or set TERN_API_KEY (/repo/.tern/dev.env does not set it)"
        );
        let err = args
            .endpoint(Api::Admin, &EnvFile::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no admin URL: pass --admin-url or set TERN_ADMIN_URL \
             (or start Tern with `make run`, which writes .tern/dev.env)"
        );
    }

    #[test]
    fn an_empty_flag_counts_as_unset() {
        let args = flags(None, Some(""), None);
        let env = file("TERN_URL=http://file\nTERN_API_KEY=file-key\n");
        assert_eq!(args.endpoint(Api::Public, &env).unwrap().token, "file-key");
    }
}
