//! What `[nats] url` (env `NATS_URL`) holds: the cluster's servers and the credentials to
//! sign in with, and how it is shown in logs and errors.
//!
//! The NATS client (async-nats 0.51) ignores a user, password or token written into a
//! server URL, so the host takes them out of the URL and hands them to the client as its
//! sign-in; the servers go to the client without them, and every log line and error shows
//! the URL with the secret masked.

use std::path::Path;

use percent_encoding::percent_decode_str;

/// How the node signs in to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum SignIn {
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for SignIn {
    /// Never the secret, wherever a `SignIn` ends up printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignIn::UserPassword { user, .. } => write!(f, "user {user:?} with a password"),
            SignIn::Token(_) => write!(f, "a token"),
        }
    }
}

/// A parsed `[nats] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// Each server, without credentials (`nats://host:4222`).
    pub servers: Vec<String>,
    /// The credentials the URL carried, if any.
    pub sign_in: Option<SignIn>,
    /// The URL as logs and errors show it: passwords and tokens masked.
    pub shown: String,
}

impl NatsUrl {
    /// Splits `url` (`nats://a:4222, nats://user:pass@b:4222`) into servers and sign-in.
    /// Credentials may be percent-encoded (`p%40ss` for `p@ss`); servers that carry
    /// different ones are refused, since one connection signs in once.
    pub fn parse(url: &str) -> Result<NatsUrl, String> {
        let shown = redacted(url);
        let mut servers = Vec::new();
        let mut sign_in: Option<SignIn> = None;
        for server in servers_of(url) {
            let (scheme, userinfo, host) = parts(server);
            servers.push(format!("{scheme}{host}"));
            let Some(userinfo) = userinfo else {
                continue;
            };
            let this = match userinfo.split_once(':') {
                Some((user, password)) => SignIn::UserPassword {
                    user: decode(user),
                    password: decode(password),
                },
                None => SignIn::Token(decode(userinfo)),
            };
            if sign_in.as_ref().is_some_and(|earlier| *earlier != this) {
                return Err(format!(
                    "the servers in [nats] url (or NATS_URL) {shown} carry different credentials; \
                     a node signs in once: give the same user and password (or token) on each, \
                     or on one of them"
                ));
            }
            sign_in = Some(this);
        }
        if servers.is_empty() {
            return Err(format!(
                "[nats] url (or NATS_URL) {url:?} names no server; expected one or more URLs \
                 like \"nats://127.0.0.1:4222\", comma-separated"
            ));
        }
        Ok(NatsUrl {
            servers,
            sign_in,
            shown,
        })
    }

    /// The client's options for signing in: the URL's credentials, or `credentials_file`
    /// (a `.creds` file: user JWT and nkey seed), never both.
    pub async fn sign_in_options(
        &self,
        credentials_file: Option<&Path>,
    ) -> Result<async_nats::ConnectOptions, String> {
        Ok(match (&self.sign_in, credentials_file) {
            (Some(_), Some(file)) => {
                return Err(format!(
                    "both [nats] url ({}) and [nats] credentials_file ({}) carry credentials; \
                     a node signs in once: keep one of them",
                    self.shown,
                    file.display()
                ))
            }
            (None, Some(file)) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|e| {
                    format!(
                        "cannot use the NATS credentials file {} ([nats] credentials_file or NATS_CREDS): {e}; \
                         expected a .creds file with a user JWT and its nkey seed, as `nsc generate creds` writes",
                        file.display()
                    )
                })?,
            (Some(SignIn::UserPassword { user, password }), None) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            (Some(SignIn::Token(token)), None) => {
                async_nats::ConnectOptions::with_token(token.clone())
            }
            (None, None) => async_nats::ConnectOptions::new(),
        })
    }
}

/// The servers of a comma-separated list, trimmed, empty entries left out.
fn servers_of(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `nats://user:pass@host:4222` → (`nats://`, `Some("user:pass")`, `host:4222`). The last
/// `@` ends the credentials, so an unencoded `@` in a password still parses.
fn parts(server: &str) -> (&str, Option<&str>, &str) {
    let (scheme, rest) = match server.find("://") {
        Some(at) => server.split_at(at + 3),
        None => ("", server),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => (scheme, Some(userinfo), host),
        None => (scheme, None, rest),
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// `url` with every server's password or token masked (`nats://user:***@host:4222`,
/// `nats://***@host:4222`): a node's log and its errors end up in places the NATS
/// credentials must not.
fn redacted(url: &str) -> String {
    servers_of(url)
        .map(|server| match parts(server) {
            (scheme, Some(userinfo), host) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{scheme}{user}:***@{host}"),
                None => format!("{scheme}***@{host}"),
            },
            (_, None, _) => server.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_masked_for_logs_and_errors() {
        for (url, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://agent:s3cret@bus:4222", "nats://agent:***@bus:4222"),
            ("tls://t0ken@bus:4222", "tls://***@bus:4222"),
            ("agent:p@ss:word@bus", "agent:***@bus"),
            (
                "nats://a:x@n1:4222, nats://n2:4222,nats://a:x@n3:4222",
                "nats://a:***@n1:4222,nats://n2:4222,nats://a:***@n3:4222",
            ),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
            assert_eq!(NatsUrl::parse(url).unwrap().shown, shown, "{url}");
        }
    }

    #[test]
    fn the_servers_go_to_the_client_without_credentials_and_the_credentials_as_its_sign_in() {
        let url = NatsUrl::parse("nats://agent:p%40ss@n1:4222, nats://n2:4222").unwrap();
        assert_eq!(url.servers, ["nats://n1:4222", "nats://n2:4222"]);
        assert_eq!(
            url.sign_in,
            Some(SignIn::UserPassword {
                user: "agent".into(),
                password: "p@ss".into()
            })
        );
        let token = NatsUrl::parse("tls://s3cr3t@bus:4222").unwrap();
        assert_eq!(token.servers, ["tls://bus:4222"]);
        assert_eq!(token.sign_in, Some(SignIn::Token("s3cr3t".into())));
        let plain = NatsUrl::parse("nats://bus:4222").unwrap();
        assert_eq!((plain.servers.len(), plain.sign_in), (1, None));
    }

    #[test]
    fn servers_with_different_credentials_are_refused_without_showing_them() {
        let err = NatsUrl::parse("nats://a:pw-1x@n1:4222,nats://a:pw-2y@n2:4222").unwrap_err();
        assert!(err.contains("different credentials"), "{err}");
        assert!(err.contains("nats://a:***@n1:4222"), "{err}");
        assert!(!err.contains("pw-1x") && !err.contains("pw-2y"), "{err}");
    }

    #[test]
    fn a_url_without_a_server_is_refused_with_the_expected_form() {
        let err = NatsUrl::parse(" , ").unwrap_err();
        assert!(err.contains("names no server"), "{err}");
        assert!(err.contains("nats://127.0.0.1:4222"), "{err}");
    }

    #[test]
    fn a_sign_in_never_prints_its_secret() {
        let sign_in = SignIn::UserPassword {
            user: "agent".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{sign_in:?}").contains("s3cret"));
        assert!(!format!("{:?}", SignIn::Token("t0k".into())).contains("t0k"));
    }
}
