//! Connecting to NATS with optional credentials, the same way in every binary.
//!
//! Each binary flattens [`NatsAuthArgs`] into its command line, so the credentials come from
//! `--nats-user`/`--nats-password` or `--nats-token`, or from the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `SHARDLINE_NATS_USER` + `SHARDLINE_NATS_PASSWORD` | user/password authentication |
//! | `SHARDLINE_NATS_TOKEN` | token authentication |
//!
//! None of them set: no credentials (a nats-server without authorization). A user without a
//! password (or the reverse), or a user together with a token, is a start-up error
//! ([`NatsAuthError`]); an empty value counts as unset. The password and the token never
//! appear in `Debug` output (the binaries log their configuration at start-up).
//!
//! The manager hands the same credentials to the shard servers it starts, as these
//! environment variables ([`NatsAuth::env`]).

use async_nats::{ClientError, ConnectOptions, Event, ServerError};

/// The user name variable.
pub const ENV_USER: &str = "SHARDLINE_NATS_USER";
/// The password variable (with [`ENV_USER`]).
pub const ENV_PASSWORD: &str = "SHARDLINE_NATS_PASSWORD";
/// The token variable (instead of a user and password).
pub const ENV_TOKEN: &str = "SHARDLINE_NATS_TOKEN";
/// Every credential variable, e.g. to clear them before setting what a child gets.
pub const ENV_VARS: [&str; 3] = [ENV_USER, ENV_PASSWORD, ENV_TOKEN];

/// What to log when NATS refuses the credentials.
const REFUSED: &str = "NATS refused the connection: authorization violation \
    (check SHARDLINE_NATS_USER/SHARDLINE_NATS_PASSWORD or SHARDLINE_NATS_TOKEN against the \
    nats-server's authorization); retrying";

/// The NATS credential options of a binary's command line (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct NatsAuthArgs {
    /// NATS user name (user/password authentication; needs --nats-password).
    #[arg(long, env = ENV_USER)]
    pub nats_user: Option<String>,
    /// NATS password of --nats-user.
    #[arg(long, env = ENV_PASSWORD, hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authorization token (token authentication, instead of a user and password).
    #[arg(long, env = ENV_TOKEN, hide_env_values = true)]
    pub nats_token: Option<String>,
}

impl std::fmt::Debug for NatsAuthArgs {
    // Hand-written so the password and the token never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // An empty value counts as unset, so it shows as `None`.
        let secret =
            |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(|_| "<redacted>");
        f.debug_struct("NatsAuthArgs")
            .field("nats_user", &self.nats_user)
            .field("nats_password", &secret(&self.nats_password))
            .field("nats_token", &secret(&self.nats_token))
            .finish()
    }
}

/// Credentials that do not make sense together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsAuthError {
    #[error(
        "NATS credentials: both a user (SHARDLINE_NATS_USER / --nats-user) and a token \
         (SHARDLINE_NATS_TOKEN / --nats-token) are set; use either a user and password or a token"
    )]
    UserAndToken,
    #[error(
        "NATS credentials: a user (SHARDLINE_NATS_USER / --nats-user) is set without a password; \
         set SHARDLINE_NATS_PASSWORD / --nats-password too"
    )]
    UserWithoutPassword,
    #[error(
        "NATS credentials: a password (SHARDLINE_NATS_PASSWORD / --nats-password) is set without \
         a user; set SHARDLINE_NATS_USER / --nats-user too"
    )]
    PasswordWithoutUser,
}

/// Checked NATS credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl NatsAuthArgs {
    /// The credentials, or why the combination given is not usable.
    pub fn auth(&self) -> Result<NatsAuth, NatsAuthError> {
        let set = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
        match (
            set(&self.nats_user),
            set(&self.nats_password),
            set(&self.nats_token),
        ) {
            (None, None, None) => Ok(NatsAuth::None),
            (Some(_), _, Some(_)) => Err(NatsAuthError::UserAndToken),
            (Some(_), None, None) => Err(NatsAuthError::UserWithoutPassword),
            (None, Some(_), _) => Err(NatsAuthError::PasswordWithoutUser),
            (Some(user), Some(password), None) => Ok(NatsAuth::UserPassword { user, password }),
            (None, None, Some(token)) => Ok(NatsAuth::Token(token)),
        }
    }
}

impl NatsAuth {
    /// `options` with these credentials.
    pub fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        match self {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => options.token(token.clone()),
        }
    }

    /// The environment that gives a child process these credentials (empty for none). Clear
    /// [`ENV_VARS`] first so that nothing else is inherited beside it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            NatsAuth::None => Vec::new(),
            NatsAuth::UserPassword { user, password } => {
                vec![(ENV_USER, user.clone()), (ENV_PASSWORD, password.clone())]
            }
            NatsAuth::Token(token) => vec![(ENV_TOKEN, token.clone())],
        }
    }
}

/// Connects to `url` as client `name` with `auth`. Returns at once: the connection is made
/// (and remade after a loss) in the background, so a binary starts before NATS is up;
/// refused credentials are logged as an error at each attempt.
pub async fn connect(
    url: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(|event| async move { log_event(event) });
    auth.apply(options).connect(url).await
}

fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
        Event::ServerError(ServerError::AuthorizationViolation) => tracing::error!("{REFUSED}"),
        // A failed (re)connection attempt; async-nats reports the kind as text.
        Event::ClientError(ClientError::Other(e)) if e.contains("authorization violation") => {
            tracing::error!("{REFUSED}")
        }
        Event::ClientError(e) => tracing::debug!(error = %e, "NATS connection attempt failed"),
        other => tracing::warn!(event = %other, "NATS event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, password: Option<&str>, token: Option<&str>) -> NatsAuthArgs {
        NatsAuthArgs {
            nats_user: user.map(Into::into),
            nats_password: password.map(Into::into),
            nats_token: token.map(Into::into),
        }
    }

    #[test]
    fn combinations() {
        use NatsAuthError::*;
        let up = NatsAuth::UserPassword {
            user: "u".into(),
            password: "p".into(),
        };
        let cases: [(NatsAuthArgs, Result<NatsAuth, NatsAuthError>); 9] = [
            (args(None, None, None), Ok(NatsAuth::None)),
            (args(Some(""), Some(""), Some("")), Ok(NatsAuth::None)),
            (args(Some("u"), Some("p"), None), Ok(up.clone())),
            (args(Some("u"), Some("p"), Some("")), Ok(up)),
            (args(None, None, Some("t")), Ok(NatsAuth::Token("t".into()))),
            (args(Some("u"), Some("p"), Some("t")), Err(UserAndToken)),
            (args(Some("u"), None, Some("t")), Err(UserAndToken)),
            (args(Some("u"), Some(""), None), Err(UserWithoutPassword)),
            (args(None, Some("p"), None), Err(PasswordWithoutUser)),
        ];
        for (a, want) in cases {
            assert_eq!(a.auth(), want, "{a:?}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let a = args(Some("alice"), Some("hunter2"), Some("tok3n"));
        let text = format!(
            "{a:?} {:?} {:?}",
            a.auth(),
            args(None, None, Some("tok3n")).auth()
        );
        assert!(text.contains("alice"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("tok3n"),
            "{text}"
        );
        let up = args(Some("alice"), Some("hunter2"), None).auth().unwrap();
        assert!(!format!("{up:?}").contains("hunter2"));
    }

    #[test]
    fn env_for_children() {
        assert!(NatsAuth::None.env().is_empty());
        let up = args(Some("u"), Some("p"), None).auth().unwrap();
        assert_eq!(
            up.env(),
            [(ENV_USER, "u".to_string()), (ENV_PASSWORD, "p".to_string())]
        );
        let t = args(None, None, Some("t")).auth().unwrap();
        assert_eq!(t.env(), [(ENV_TOKEN, "t".to_string())]);
    }

    #[test]
    fn parsed_from_flags() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            nats: NatsAuthArgs,
        }
        let cli = Cli::try_parse_from(["x", "--nats-user", "u", "--nats-password", "p"]).unwrap();
        assert_eq!(
            cli.nats.auth(),
            Ok(NatsAuth::UserPassword {
                user: "u".into(),
                password: "p".into()
            })
        );
    }
}
